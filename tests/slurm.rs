//! A sharded sweep on a real scheduler: the Slurm job-array template over 3 tasks, merged, equals
//! the unsharded sweep. `.ci/run` installs Slurm and starts a one-node cluster first
//! (scripts/slurm-start.sh); where Slurm cannot be started the test fails, saying why.

use std::process::Command;

#[test]
fn slurm_job_array_shards_merge_to_the_unsharded_sweep() {
    let root = env!("CARGO_MANIFEST_DIR");
    let up = Command::new("sinfo").arg("-h").output().map(|o| o.status.success()).unwrap_or(false);
    if !up {
        let start = Command::new("bash").arg(format!("{root}/scripts/slurm-start.sh")).output();
        let ok = start.as_ref().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            let why = match start {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            panic!("Slurm cannot be started here ({why}); install it (as root: apt-get install slurmctld slurmd slurm-client munge, as .ci/run does) and rerun");
        }
    }
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/slurm-check.sh"))
        .env("EXITBENCH", env!("CARGO_BIN_EXE_exitbench"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("merged shards equal the unsharded sweep"), "{text}");
}
