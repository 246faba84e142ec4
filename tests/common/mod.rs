//! Helpers shared by the integration tests.

use std::ffi::OsStr;
use std::process::Command;

/// No extra environment variables.
pub const NO_ENV: &[(&str, &str)] = &[];

/// Runs the exitbench binary with `args` and extra environment variables; returns (exit code,
/// stdout, stderr). Its ONNX export cache is `target/tmp/onnx-cache` unless `env` names one.
pub fn exitbench<V: AsRef<OsStr>>(args: &[&str], env: &[(&str, V)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exitbench"));
    c.args(args).env("EXITBENCH_ONNX_CACHE", std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-cache"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}
