//! The ONNX Runtime backend against candle: the same weights give the same hidden states, logits,
//! tokens and exit decisions; bad libraries, caches and devices are errors, never panics. These
//! tests need ONNX Runtime (`bash scripts/setup-venv.sh`); without it they fail.

mod common;
use common::{exitbench, NO_ENV};
use exitbench::backend::{self, Backend, BackendKind, DeviceKind, Inspect, OpenBackend};
use exitbench::decode::{generate, GenerateOptions, Generation, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use exitbench::backend::ort::graphs::CacheForm;
use exitbench::backend::ort::OrtBackend;
use exitbench::decode::batch::{generate_batch, BatchPolicy};
use exitbench::decode::speculative::{generate_speculative, DraftCache, Speculation};
use exitbench::model::{ModelFiles, Precision};
use exitbench::testkit::{tiny_config, tiny_variant_config, write_random_classifiers, write_tiny_model};
use exitbench::with_backend;
use std::path::Path;
use std::process::Command;

/// The export cache of this test process: `target/tmp/onnx-cache` (subprocesses inherit it
/// unless a test gives its own).
fn test_cache() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-cache");
    exitbench::testkit::onnx_cache_once(&dir);
    dir
}

fn open(kind: BackendKind, dir: &Path, p: Precision) -> OpenBackend {
    test_cache();
    let files = ModelFiles::open(dir, None).unwrap();
    backend::open(kind, &files, DeviceKind::Cpu, p, 1).unwrap_or_else(|e| panic!("{kind:?} {p:?}: {e}"))
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den
}

/// Per-layer hidden states (prefill, then decode steps) and every exit-head's logits.
fn trace<B: Inspect>(b: &mut B, prompt: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    b.reset();
    let (mut hs, mut logits) = (Vec::new(), Vec::new());
    let mut ids = prompt.to_vec();
    for step in 0..=steps {
        let mut h = b.embed(if step == 0 { &ids } else { &ids[ids.len() - 1..] }).unwrap();
        for l in 1..=b.num_layers() {
            h = b.layer(l, &h).unwrap();
            hs.push(b.hidden_to_host(&h).unwrap());
            logits.push(b.exit_logits(&h).unwrap());
        }
        ids.push(exitbench::head::argmax(logits.last().unwrap()));
    }
    (hs, logits)
}

#[test]
fn hidden_states_and_logits_agree_per_layer() {
    for variant in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = if variant { tiny_variant_config(4, 300) } else { tiny_config(4, 300) };
        write_tiny_model(dir.path(), &cfg, 31).unwrap();
        let prompt = ModelFiles::open(dir.path(), None).unwrap().tokenizer.encode("The Hawks beat the Foxes by 47 runs.").unwrap();
        let (c, o) = (open(BackendKind::Candle, dir.path(), Precision::F32), open(BackendKind::Ort, dir.path(), Precision::F32));
        let (ch, cl) = with_backend!(&mut { c }, b => trace(b, &prompt, 6));
        let (oh, ol) = with_backend!(&mut { o }, b => trace(b, &prompt, 6));
        let worst_h = ch.iter().zip(&oh).map(|(a, b)| rel(b, a)).fold(0.0, f64::max);
        let worst_l = cl.iter().zip(&ol).map(|(a, b)| rel(b, a)).fold(0.0, f64::max);
        println!("variant={variant}: worst ‖ort − candle‖/‖candle‖: hidden {worst_h:.2e}, logits {worst_l:.2e}");
        assert!(worst_h <= 1e-4, "hidden states differ by {worst_h:e} (variant {variant})");
        assert!(worst_l <= 1e-4, "exit-head logits differ by {worst_l:e} (variant {variant})");
        assert!(worst_h > 0.0 || worst_l > 0.0 || ch.len() > 1, "nothing compared");
    }
}

fn mode(measure: Measure, threshold: f64) -> ExitMode {
    ExitMode::Dynamic(ExitPolicy { measure, threshold, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 })
}

/// True when the two generations may differ without either being wrong: an exit decision within
/// 1e-5 of the threshold, or a token chosen by an argmax gap below 1e-5 (in either run).
fn near_tie(a: &Generation, b: &Generation) -> bool {
    a.tokens.iter().chain(&b.tokens).any(|t| t.min_margin.is_some_and(|m| m < 1e-5) || t.top2_gap.is_some_and(|g| g < 1e-5))
}

#[test]
fn default_model_tokens_and_exit_layers_match_candle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(exitbench::DEFAULT_MODEL);
    let files = ModelFiles::open(&dir, None).unwrap();
    let examples = exitbench::data::synth::generate(exitbench::data::synth::Split::Test, exitbench::data::synth::DEFAULT_SEED, 20);
    let prompts: Vec<Vec<u32>> = examples.iter().map(|e| files.tokenizer.encode(&e.prompt).unwrap()).collect();
    let (mut c, mut o) = (open(BackendKind::Candle, &dir, Precision::F32), open(BackendKind::Ort, &dir, Precision::F32));
    let mut compared = 0;
    for &measure in Measure::ALL {
        for threshold in [0.9, 0.7, 0.5] {
            let opts = GenerateOptions { mode: mode(measure, threshold), max_new_tokens: 64, sampling: Sampling::default(), eos_ids: files.config.eos_ids(), profile_layers: false, time_split: true };
            let (mut ties, mut differ) = (0, Vec::new());
            for (i, p) in prompts.iter().enumerate() {
                let a = with_backend!(&mut c, b => generate(b, p, &opts)).unwrap();
                let b = with_backend!(&mut o, b => generate(b, p, &opts)).unwrap();
                let same = a.ids() == b.ids() && a.tokens.iter().map(|t| t.exit_layer).eq(b.tokens.iter().map(|t| t.exit_layer));
                compared += 1;
                if !same {
                    if near_tie(&a, &b) {
                        ties += 1;
                    } else {
                        differ.push(i);
                    }
                }
            }
            println!("{}@{threshold}: {ties} sample(s) differ at a near-tie", measure.name());
            assert!(differ.is_empty(), "{}@{threshold}: samples {differ:?} differ without a near-tie", measure.name());
            assert!(ties <= 1, "{}@{threshold}: {ties} samples differ at near-ties (at most one allowed)", measure.name());
        }
    }
    assert_eq!(compared, 4 * 3 * 20);
}

#[test]
fn f16_runs_finite_and_reports_its_agreement_and_bf16_is_unsupported_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), &tiny_config(4, 300), 41).unwrap();
    write_random_classifiers(dir.path(), &cfg, 3).unwrap();
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let prompt = files.tokenizer.encode("The Hawks beat the Foxes by 47 runs.").unwrap();
    let opts = GenerateOptions { mode: ExitMode::Full, max_new_tokens: 16, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
    let g32 = with_backend!(&mut open(BackendKind::Ort, dir.path(), Precision::F32), b => generate(b, &prompt, &opts)).unwrap();
    let mut o16 = open(BackendKind::Ort, dir.path(), Precision::F16);
    let info = with_backend!(&mut o16, b => b.runtime_info());
    // The CPU provider has no f16 MatMul: the optimized graph computes in f32 and says so.
    assert_eq!(info.compute_dtype, "f32", "{info:?}");
    let (g16, logits) = with_backend!(&mut o16, b => {
        let g = generate(b, &prompt, &opts).unwrap();
        let mut h = b.embed(&prompt).unwrap();
        for l in 1..=4 { h = b.layer(l, &h).unwrap(); }
        (g, b.exit_logits(&h).unwrap())
    });
    assert!(logits.iter().all(|x| x.is_finite()), "f16 logits not finite");
    let agree = g16.ids().iter().zip(g32.ids()).filter(|(a, b)| **a == *b).count();
    println!("ort f16 vs f32: {agree}/{} tokens agree (compute dtype {})", g32.tokens.len(), info.compute_dtype);
    // bf16: the CPU provider has no bf16 MatMul; the runtime's own message comes back.
    let err = backend::open(BackendKind::Ort, &files, DeviceKind::Cpu, Precision::Bf16, 1).err().expect("bf16 on the CPU provider should be refused");
    assert!(matches!(err, exitbench::Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("MatMul"), "{err}");
}

#[test]
fn full_depth_graph_with_external_data_matches_layer_by_layer() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_variant_config(3, 300), 51).unwrap();
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let out = dir.path().join("export-external");
    let m = exitbench::backend::ort::export::write_export(&files, &files.weights_hash().unwrap(), Precision::F32, CacheForm::InPlace, &out, true).unwrap();
    assert!(m.files.iter().any(|f| f.name == "full.onnx.data" && f.bytes > 0), "{m:?}");
    assert!(std::fs::metadata(out.join("full.onnx")).unwrap().len() < 64 * 1024, "weights stayed inside the protobuf");
    let mut full = exitbench::backend::ort::FullDepth::open_file(&out.join("full.onnx"), &files, DeviceKind::Cpu, Precision::F32, 1, false, CacheForm::InPlace).unwrap();
    let prompt = files.tokenizer.encode("The Hawks beat the Foxes by 47 runs.").unwrap();
    let opts = GenerateOptions { mode: ExitMode::Full, max_new_tokens: 12, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
    let lbl = with_backend!(&mut open(BackendKind::Ort, dir.path(), Precision::F32), b => generate(b, &prompt, &opts)).unwrap();
    let mut ids = vec![full.step(&prompt).unwrap().argmax];
    while ids.len() < 12 {
        ids.push(full.step(&[*ids.last().unwrap()]).unwrap().argmax);
    }
    assert_eq!(ids, lbl.ids());
}

#[test]
fn export_onnx_writes_a_verified_cache_and_refuses_an_existing_out() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(2, 300), 61).unwrap();
    let d = dir.path().display().to_string();
    let cache = tempfile::tempdir().unwrap();
    let env = [("EXITBENCH_ONNX_CACHE", cache.path().to_str().unwrap())];
    let (code, out, err) = exitbench(&["export-onnx", "--model", &d], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("files") && out.contains("dtype f32"), "{out}");
    let (code, _, err) = exitbench(&["export-onnx", "--model", &d], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("up to date"), "{err}");
    let target = dir.path().join("mine");
    let t = target.display().to_string();
    assert_eq!(exitbench(&["export-onnx", "--model", &d, "--out", &t, "--dtype", "f16"], &env).0, 0);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(target.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["dtype"], "f16");
    refused(&["export-onnx".into(), "--model".into(), d.clone(), "--out".into(), t.clone()], &[], &["--out", "already exists"]);
    refused(&["export-onnx".into(), "--model".into(), d, "--dtype".into(), "f8".into()], &[], &["--dtype"]);
}


fn gen(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["generate", "--backend", "ort", "--model", &dir.display().to_string(), "--prompt", "The Hawks", "--max-new-tokens", "3"].iter().map(|s| s.to_string()).collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn refused(args: &[String], env: &[(&str, &str)], needles: &[&str]) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = exitbench(&a, env);
    assert_eq!(code, 2, "{args:?}: exit {code}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention `{n}`: {err}");
    }
}

/// A shared library exporting `OrtGetApiBase` whose version is `version` (built with cc).
fn fake_library(dir: &Path, version: &str) -> std::path::PathBuf {
    let src = dir.join("fake.c");
    std::fs::write(
        &src,
        format!(
            "typedef struct {{ const void* (*GetApi)(unsigned); const char* (*GetVersionString)(void); }} Base;\n\
             static const void* get_api(unsigned v) {{ (void)v; return 0; }}\n\
             static const char* ver(void) {{ return \"{version}\"; }}\n\
             static Base base = {{ get_api, ver }};\n\
             const Base* OrtGetApiBase(void) {{ return &base; }}\n"
        ),
    )
    .unwrap();
    let lib = dir.join(format!("libfake-{version}.so"));
    let st = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&src).status().expect("cc is needed to build the fake library");
    assert!(st.success());
    lib
}

#[test]
fn bad_libraries_caches_and_devices_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(2, 300), 5).unwrap();
    // The library missing: unsupported, with the install command.
    refused(&gen(dir.path(), &[]), &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")], &["ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"]);
    // Not a library at all.
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"not an ELF file").unwrap();
    refused(&gen(dir.path(), &[]), &[("ORT_DYLIB_PATH", junk.to_str().unwrap())], &["not a loadable ONNX Runtime library", "setup-venv.sh"]);
    // A library of an unsupported version.
    let old = fake_library(dir.path(), "1.10.0");
    refused(&gen(dir.path(), &[]), &[("ORT_DYLIB_PATH", old.to_str().unwrap())], &["ONNX Runtime 1.10.0 is not supported", "1.30"]);
    // CUDA asked where it is absent: unsupported with the runtime's reason, never the CPU.
    refused(&gen(dir.path(), &["--device", "cuda:0"]), &[], &["CUDA"]);
    // A corrupt and a truncated graph in the cache: re-exported with a warning, then it runs.
    let own = tempfile::tempdir().unwrap();
    let cache_flag = own.path().display().to_string();
    let ok = gen(dir.path(), &["--json", "--onnx-cache", &cache_flag]);
    let okr: Vec<&str> = ok.iter().map(String::as_str).collect();
    let (code, first, err) = exitbench(&okr, NO_ENV);
    assert_eq!(code, 0, "{err}");
    let cache = std::fs::read_dir(own.path()).unwrap().next().unwrap().unwrap().path();
    for damage in ["corrupt", "truncate"] {
        let f = cache.join("layer_1.onnx");
        let bytes = std::fs::read(&f).unwrap();
        let new = if damage == "corrupt" { bytes.iter().map(|b| b ^ 0x5a).collect() } else { bytes[..bytes.len() / 2].to_vec() };
        std::fs::write(&f, new).unwrap();
        let (code, out, err) = exitbench(&okr, NO_ENV);
        assert_eq!(code, 0, "{damage}: {err}");
        assert!(err.contains("does not match its manifest") && err.contains("exporting again"), "{damage}: {err}");
        let ids = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["token_ids"].clone();
        assert_eq!(ids(&out), ids(&first), "{damage}: the re-export gives other tokens");
    }
}

#[test]
fn the_export_cache_is_keyed_by_the_config_too() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(2, 300), 71).unwrap();
    let a = ModelFiles::open(dir.path(), None).unwrap();
    let wh = a.weights_hash().unwrap();
    let before = exitbench::backend::ort::export::cache_dir(&a, &wh, Precision::F32, CacheForm::InPlace);
    // Same weights, another config (a fixed rms_norm_eps): another export, never the stale one.
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    v["rms_norm_eps"] = 1e-6.into();
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let b = ModelFiles::open(dir.path(), None).unwrap();
    assert_ne!(exitbench::backend::ort::export::cache_dir(&b, &wh, Precision::F32, CacheForm::InPlace), before);
}

#[test]
fn the_cache_is_in_the_cache_directory_and_copies_of_a_model_share_one_export() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tiny_model(a.path(), &tiny_config(2, 300), 81).unwrap();
    for f in std::fs::read_dir(a.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), b.path().join(f.file_name())).unwrap();
    }
    let (da, db) = (a.path().display().to_string(), b.path().display().to_string());
    let export = |model: &str, env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["export-onnx", "--model", model];
        args.extend(extra);
        let (code, out, err) = exitbench(&args, env);
        assert_eq!(code, 0, "{err}");
        (out, err)
    };
    let only_entry = |d: &Path| {
        let v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].clone()
    };
    // EXITBENCH_ONNX_CACHE: one export for both copies, none inside the model directories.
    let cache = tempfile::tempdir().unwrap();
    let env = [("EXITBENCH_ONNX_CACHE", cache.path().to_str().unwrap())];
    let (out, _) = export(&da, &env, &[]);
    let leaf = only_entry(cache.path());
    assert!(out.starts_with(&leaf.display().to_string()), "{out}");
    let (_, err) = export(&db, &env, &[]);
    assert!(err.contains("up to date") && err.contains(&leaf.display().to_string()), "the copy did not reuse the export: {err}");
    assert_eq!(only_entry(cache.path()), leaf);
    for m in [a.path(), b.path()] {
        assert!(std::fs::read_dir(m).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("onnx")), "an export was written into {}", m.display());
    }
    // XDG_CACHE_HOME (the variable unset): `$XDG_CACHE_HOME/exitbench/onnx`; --onnx-cache wins.
    let xdg = tempfile::tempdir().unwrap();
    let xenv = [("EXITBENCH_ONNX_CACHE", ""), ("XDG_CACHE_HOME", xdg.path().to_str().unwrap())];
    export(&db, &xenv, &[]);
    let root = xdg.path().join("exitbench").join("onnx");
    assert_eq!(only_entry(&root).file_name(), leaf.file_name());
    let flagged = tempfile::tempdir().unwrap();
    export(&da, &xenv, &["--onnx-cache", flagged.path().to_str().unwrap()]);
    assert_eq!(only_entry(flagged.path()).file_name(), leaf.file_name());
    // `info` shows the directory, its exports and size; --clear-onnx-cache empties it.
    let (code, out, err) = exitbench(&["info", "--json"], &xenv);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["onnx_cache"]["dir"], root.display().to_string());
    assert_eq!(v["onnx_cache"]["exports"], 1);
    assert!(v["onnx_cache"]["bytes"].as_u64().unwrap() > 10_000, "{v}");
    let (code, out, err) = exitbench(&["info", "--clear-onnx-cache"], &xenv);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 1 ONNX export"), "{out}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[test]
fn streamed_external_data_is_the_inline_graph_byte_for_byte() {
    use exitbench::backend::ort::{export, onnx};
    use prost::Message;
    test_cache();
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_variant_config(2, 300), 91).unwrap();
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let wh = files.weights_hash().unwrap();
    let (inline, external) = (dir.path().join("inline"), dir.path().join("external"));
    let mi = export::write_export(&files, &wh, Precision::F32, CacheForm::InPlace, &inline, false).unwrap();
    let me = export::write_export(&files, &wh, Precision::F32, CacheForm::InPlace, &external, true).unwrap();
    // Both verify against their manifests (hashes computed while writing = hashes re-read).
    assert_eq!(export::verify(&inline).unwrap().files, mi.files);
    assert_eq!(export::verify(&external).unwrap().files, me.files);
    // Every other file is the same; full.onnx + full.onnx.data put back together is the inline one.
    let others = |m: &export::Manifest| m.files.iter().filter(|f| !f.name.starts_with("full.onnx")).cloned().collect::<Vec<_>>();
    assert_eq!(others(&mi), others(&me));
    let mut model = onnx::ModelProto::decode(std::fs::read(external.join("full.onnx")).unwrap().as_slice()).unwrap();
    let data = std::fs::read(external.join("full.onnx.data")).unwrap();
    let mut moved = 0;
    for t in &mut model.graph.as_mut().unwrap().initializer {
        if t.data_location != 1 {
            continue;
        }
        let kv = |k: &str| t.external_data.iter().find(|e| e.key == k).unwrap().value.clone();
        assert_eq!(kv("location"), "full.onnx.data");
        let (off, len): (usize, usize) = (kv("offset").parse().unwrap(), kv("length").parse().unwrap());
        assert_eq!(off % 4096, 0, "external data not aligned");
        t.raw_data = data[off..off + len].to_vec();
        t.external_data.clear();
        t.data_location = 0;
        moved += 1;
    }
    assert!(moved > 10, "only {moved} initializers were external");
    assert!(model.encode_to_vec() == std::fs::read(inline.join("full.onnx")).unwrap(), "external + data differs from the inline graph");
}

/// ONNX Runtime's in-place caches (GroupQueryAttention extending one buffer per layer) decode
/// what the concatenating graphs decode: the same tokens and exit layers, and caches equal to
/// within rounding (the op's attention sums in its own order), through early exits (propagated
/// entries written by the host), speculation (rolled-back positions), batched rows, later prompts
/// on kept buffers, and buffers that must grow (3 positions at first: 3 → 6 → … → 48).
#[test]
fn in_place_caches_decode_as_concatenated_ones() {
    test_cache();
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_variant_config(4, 300), 5).unwrap();
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let open = |form| OrtBackend::open_form(&files, DeviceKind::Cpu, Precision::F32, 1, false, form).unwrap_or_else(|e| panic!("{form:?}: {e}"));
    let (mut cat, mut inp) = (open(CacheForm::Concat), open(CacheForm::InPlace));
    assert_eq!((cat.cache_form(), inp.cache_form()), (CacheForm::Concat, CacheForm::InPlace));
    inp.set_cache_capacity(3);
    let prompts: Vec<Vec<u32>> = ["The Hawks beat the Foxes by 47 runs.", "Rain delayed the start", "Ansel Morrow top-scored with 87"].iter().map(|p| files.tokenizer.encode(p).unwrap()).collect();
    let opts = |mode| GenerateOptions { mode, max_new_tokens: 24, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
    let layers_of = |g: &Generation| g.tokens.iter().map(|t| t.exit_layer).collect::<Vec<_>>();
    let (mut compared, mut ties, mut exits, mut worst) = (0, 0, 0, 0f64);
    let mut same_or_tie = |a: &Generation, b: &Generation, what: &str| {
        compared += 1;
        if a.ids() != b.ids() || layers_of(a) != layers_of(b) {
            assert!(near_tie(a, b), "{what}: the in-place caches decode otherwise, without a near-tie");
            ties += 1;
        }
    };
    for (i, p) in prompts.iter().enumerate() {
        for m in [ExitMode::Full, mode(Measure::SoftmaxMax, 0.1)] {
            let (a, b) = (generate(&mut cat, p, &opts(m)).unwrap(), generate(&mut inp, p, &opts(m)).unwrap());
            same_or_tie(&a, &b, &format!("prompt {i}, {m:?}"));
            exits += b.tokens.iter().filter(|t| t.exit_layer < 4).count();
            for l in 1..=4 {
                let (x, y) = (cat.cached_kv(l).unwrap().unwrap(), inp.cached_kv(l).unwrap().unwrap());
                assert_eq!(x.len, y.len, "layer {l} cache length");
                worst = worst.max(rel(&y.k, &x.k)).max(rel(&y.v, &x.v));
            }
        }
        let spec = Speculation { draft_layer: 2, draft_tokens: 4, cache: DraftCache::Shared, stop: None };
        let (a, b) = (generate_speculative(&mut cat, p, &opts(ExitMode::Full), &spec).unwrap(), generate_speculative(&mut inp, p, &opts(ExitMode::Full), &spec).unwrap());
        same_or_tie(&a.generation, &b.generation, &format!("prompt {i}, speculative"));
        assert!(b.stats.accepted < b.stats.drafted, "no draft was rejected: nothing rolled back");
    }
    for policy in [BatchPolicy::PerRow, BatchPolicy::Compact] {
        let m = mode(Measure::SoftmaxMax, 0.1);
        let (a, b) = (generate_batch(&mut cat, &prompts, &opts(m), policy, None).unwrap(), generate_batch(&mut inp, &prompts, &opts(m), policy, None).unwrap());
        for (r, (x, y)) in a.rows.iter().zip(&b.rows).enumerate() {
            same_or_tie(x, y, &format!("batch {policy:?}, row {r}"));
        }
    }
    println!("in place vs concatenated: {compared} generations, {ties} near-tie difference(s), {exits} early exits, worst cache ‖Δ‖/‖x‖ {worst:.1e}");
    assert_eq!(compared, 3 * 3 + 2 * 3);
    assert!(ties <= 1, "{ties} generations differ at near-ties");
    assert!(exits >= 10, "only {exits} early exits: propagation is barely exercised");
    assert!(worst > 0.0 && worst < 1e-5, "cache difference {worst:e}");
}

/// A verified export is not hashed again while its files keep their sizes and modification
/// times (`verified.json`); a file rewritten since (a new modification time) is hashed and
/// caught, as is one of another size, and a stamp younger than the files' last two seconds of
/// change is not trusted.
#[test]
fn a_verified_export_is_checked_by_stamp_and_a_changed_file_by_hash() {
    use exitbench::backend::ort::export;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(2, 300), 61).unwrap();
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let out = dir.path().join("export");
    export::write_export(&files, &files.weights_hash().unwrap(), Precision::F32, CacheForm::InPlace, &out, false).unwrap();
    let stamp = out.join(export::VERIFIED);
    // Just written: the stamp of a first check is not trusted yet (the files are too new).
    export::verify(&out).unwrap();
    let first = std::fs::read_to_string(&stamp).unwrap();
    export::verify(&out).unwrap();
    assert_ne!(std::fs::read_to_string(&stamp).unwrap(), first, "a stamp younger than its files' last change was trusted");
    // Files a minute old: checked once by hash, then by stamp.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
    }
    export::verify(&out).unwrap();
    let trusted = std::fs::read_to_string(&stamp).unwrap();
    let layer = out.join("layer_1.onnx");
    let bytes = std::fs::read(&layer).unwrap();
    let flipped: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&layer, &flipped).unwrap();
    // The same size and its old time put back: the stamp is trusted (no file is read).
    std::fs::File::options().write(true).open(&layer).unwrap().set_modified(old).unwrap();
    export::verify(&out).unwrap();
    assert_eq!(std::fs::read_to_string(&stamp).unwrap(), trusted);
    // Rewritten now: hashed, and refused.
    std::fs::write(&layer, &flipped).unwrap();
    let why = export::verify(&out).unwrap_err();
    assert!(why.contains("layer_1.onnx") && why.contains("SHA-256"), "{why}");
    // Another size: refused before any hash.
    std::fs::write(&layer, &bytes[..bytes.len() / 2]).unwrap();
    let why = export::verify(&out).unwrap_err();
    assert!(why.contains("layer_1.onnx") && why.contains("bytes"), "{why}");
}

/// Batched rows on ONNX Runtime's in-place graphs share one buffer per layer: a batched
/// prefill of prompts of different lengths (padded), steps where some rows ride along while
/// others run (and run after), propagated entries written for a row that exits at layer 2,
/// buffers that start at 2 positions and grow twice, a verification-like pass of 3 positions
/// per row after cached ones (one call per position) and a rollback. Every row's tokens, head
/// summaries and caches equal the same row decoded alone through the single-row calls (caches
/// and logit gaps within rounding: batched products may sum in another order).
#[test]
fn batched_rows_share_buffers_that_grow() {
    use exitbench::backend::{Batch, Speculate};
    test_cache();
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_variant_config(4, 300), 5).unwrap();
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let mut o = OrtBackend::open_form(&files, DeviceKind::Cpu, Precision::F32, 1, false, CacheForm::InPlace).unwrap();
    let prompts: Vec<Vec<u32>> = ["The Hawks beat the Foxes by 47 runs.", "Rain", "Ansel Morrow top-scored with 87 at Kelmarsh"].iter().map(|p| files.tokenizer.encode(p).unwrap()).collect();
    assert!(prompts.iter().map(Vec::len).collect::<std::collections::BTreeSet<_>>().len() == 3, "prompts of three lengths");
    let (layers, steps, exit_row) = (4, 6, 2);
    // Row `exit_row` runs layers 1..=2 and propagates into 3..=4; the others run every layer.
    let depth = |r: usize| if r == exit_row { 2 } else { layers };
    // Alone: single-row calls.
    let mut alone = Vec::new();
    for (r, p) in prompts.iter().enumerate() {
        o.reset();
        let mut h = o.embed(p).unwrap();
        for l in 1..=layers {
            h = o.layer(l, &h).unwrap();
        }
        let mut heads = vec![o.head(&h).unwrap()];
        for _ in 0..steps {
            let mut h = o.embed(&[heads.last().unwrap().argmax]).unwrap();
            for l in 1..=depth(r) {
                h = o.layer(l, &h).unwrap();
            }
            for l in depth(r) + 1..=layers {
                o.propagate(l, &h).unwrap();
            }
            heads.push(o.head(&h).unwrap());
        }
        // A pass of 3 positions after the cached ones, then rolled back by 2.
        let toks: Vec<u32> = heads[heads.len() - 3..].iter().map(|s| s.argmax).collect();
        let mut h = o.embed(&toks).unwrap();
        for l in 1..=layers {
            h = o.layer(l, &h).unwrap();
        }
        let pass = o.heads(&h).unwrap();
        let len = o.cache_len(1);
        for l in 1..=layers {
            o.truncate(l, len - 2).unwrap();
        }
        let kv: Vec<_> = (1..=layers).map(|l| o.cached_kv(l).unwrap().unwrap()).collect();
        alone.push((heads, pass, kv));
    }
    // Batched: buffers of 2 positions at first.
    let n = prompts.len();
    let all: Vec<usize> = (0..n).collect();
    o.start_rows(n, 2).unwrap();
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut h = o.embed_rows(&slices).unwrap();
    for l in 1..=layers {
        h = o.layer_rows(l, &all, &h).unwrap();
        assert_eq!(o.last_layer_reads(n), 1, "a batched prefill is one call");
    }
    let mut heads: Vec<Vec<_>> = o.head_rows(&h).unwrap().into_iter().map(|s| vec![s]).collect();
    for _ in 0..steps {
        let toks: Vec<[u32; 1]> = heads.iter().map(|x| [x.last().unwrap().argmax]).collect();
        let h0 = o.embed_rows(&toks.iter().map(|t| &t[..]).collect::<Vec<_>>()).unwrap();
        // Rows 0 and 2 together (row 1 rides along), then row 1 alone; row 2 stops at layer 2.
        let (first, second) = (vec![0, 2], vec![1]);
        let pick = |rows: &[usize]| rows.iter().map(|&r| h0[r].clone()).collect::<Vec<_>>();
        let (mut a, mut b) = (pick(&first), pick(&second));
        for l in 1..=layers {
            if l <= 2 {
                a = o.layer_rows(l, &first, &a).unwrap();
            } else {
                let going: Vec<usize> = first.iter().copied().filter(|&r| r != exit_row).collect();
                let next = o.layer_rows(l, &going, &vec![a[0].clone()]).unwrap();
                o.propagate_rows(l, &[exit_row], &vec![a[1].clone()]).unwrap();
                a = vec![next[0].clone(), a[1].clone()];
            }
            b = o.layer_rows(l, &second, &b).unwrap();
        }
        let (ha, hb) = (o.head_rows(&a).unwrap(), o.head_rows(&b).unwrap());
        heads[0].push(ha[0]);
        heads[2].push(ha[1]);
        heads[1].push(hb[0]);
    }
    let segs: Vec<Vec<u32>> = heads.iter().map(|x| x[x.len() - 3..].iter().map(|s| s.argmax).collect()).collect();
    let mut h = o.embed_rows(&segs.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    for l in 1..=layers {
        h = o.layer_rows(l, &all, &h).unwrap();
        assert_eq!(o.last_layer_reads(n), 3, "after cached positions, one call per position");
    }
    let pass = exitbench::backend::SpeculateRows::heads_rows(&mut o, &h).unwrap();
    for r in 0..n {
        let len = o.row_cache_len(r, 1);
        o.truncate_row(r, len - 2).unwrap();
    }
    let close = |a: &exitbench::backend::HeadSummary, b: &exitbench::backend::HeadSummary, what: &str| {
        assert_eq!(a.argmax, b.argmax, "{what}");
        assert!((a.logit_gap - b.logit_gap).abs() < 1e-4, "{what}: gap {} vs {}", a.logit_gap, b.logit_gap);
    };
    let mut worst = 0f64;
    for r in 0..n {
        let (want_heads, want_pass, want_kv) = &alone[r];
        assert_eq!(heads[r].len(), want_heads.len());
        for (k, (a, b)) in heads[r].iter().zip(want_heads).enumerate() {
            close(a, b, &format!("row {r} token {k}"));
        }
        for (k, (a, b)) in pass[r].iter().zip(want_pass).enumerate() {
            close(a, b, &format!("row {r} pass position {k}"));
        }
        for l in 1..=layers {
            let got = o.row_cached_kv(r, l).unwrap().unwrap();
            let want = &want_kv[l - 1];
            assert_eq!(got.len, want.len, "row {r} layer {l}: cached positions");
            worst = worst.max(rel(&got.k, &want.k)).max(rel(&got.v, &want.v));
        }
    }
    println!("batched rows vs alone: worst cache ‖Δ‖/‖x‖ {worst:.1e}");
    assert!(worst < 1e-5, "caches differ by {worst:e}");
}
