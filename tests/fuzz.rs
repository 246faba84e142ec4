//! Property-based fuzzing of every parser of outside input: config.json, safetensors headers and
//! shard indexes, tokenizer.json, dataset lines, TOML settings, result and round records, and the
//! ONNX export cache's manifest. For arbitrary bytes and for mutations
//! of a valid input, parsing never panics and a refusal names the input (and is exit code 2).
//!
//! A few thousand cases run in seconds by default, from a fixed seed (CI passes or fails the same
//! way every time); a longer run from a fresh seed:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz`. Every crash found becomes a
//! regression test (see `a_tokenizer_that_makes_the_library_panic_is_bad_input`).

use exitbench::model::{st_header, LlamaConfig};
use proptest::prelude::*;
use std::path::Path;

/// Cases per property: `PROPTEST_CASES` when set, else `default`. The default run (CI) uses a
/// fixed seed, so it passes or fails the same way every time; a longer run with
/// `PROPTEST_CASES` draws a fresh seed (or takes `PROPTEST_RNG_SEED`) to find new inputs.
fn cases(default: u32) -> ProptestConfig {
    let given = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok());
    let rng_seed = match (given, std::env::var("PROPTEST_RNG_SEED").ok().and_then(|v| v.parse().ok())) {
        (_, Some(seed)) => proptest::test_runner::RngSeed::Fixed(seed),
        (None, None) => proptest::test_runner::RngSeed::Fixed(0x5eed_f022),
        (Some(_), None) => proptest::test_runner::RngSeed::Random,
    };
    ProptestConfig { cases: given.unwrap_or(default), failure_persistence: None, rng_seed, ..ProptestConfig::default() }
}

/// One edit of a valid input: a byte replaced, bytes inserted, a range deleted, or a cut.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let interesting = prop_oneof![
        any::<u8>(),
        Just(b'"'), Just(b','), Just(b'{'), Just(b'}'), Just(b'['), Just(b'-'), Just(b'9'), Just(b'\n'), Just(b'='), Just(0xff)
    ];
    let edit = prop_oneof![
        (any::<usize>(), interesting).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..8),
            Just(b"99999999999999999999".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"1e308".to_vec()),
            Just(b"null".to_vec()),
            Just(b"NaN".to_vec()),
        ]).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Replace(i, x) if !b.is_empty() => {
                let i = i % b.len();
                b[i] = *x;
            }
            Edit::Replace(..) => {}
            Edit::Insert(i, x) => {
                let i = at(*i, b.len());
                b.splice(i..i, x.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::Truncate(i) => {
                let i = at(*i, b.len());
                b.truncate(i);
            }
        }
    }
    b
}

/// Valid or mutated-valid or arbitrary bytes.
fn inputs(valid: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => edits().prop_map(move |e| apply(valid, &e)),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "\\PC{0,200}".prop_map(String::into_bytes),
    ]
}

const CONFIG: &[u8] = br#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
"num_key_value_heads": 2, "max_position_embeddings": 128, "vocab_size": 300, "eos_token_id": [1, 2], "bos_token_id": 1,
"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
"tie_word_embeddings": true, "architectures": ["LlamaForCausalLM"]}"#;

const HEADER: &[u8] = br#"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]}}"#;

const DATASET: &[u8] = b"{\"id\": \"a\", \"prompt\": \"The Hawks beat the Foxes.\", \"reference\": \"Hawks won.\"}\n{\"id\": \"b\", \"prompt\": \"Rain.\", \"reference\": \"Rain fell.\"}\n";

const SETTINGS: &[u8] = b"samples = 3\nthresholds = [0.9, \"0.5:0.3:0.1\"]\nmeasure = \"softmax-diff, saturation\"\nthreads = [1, 2]\nstatic-exit = 1\ntau = 4.0\ndtype = \"f32\"\nbackend = [\"candle\"]\n";

const ROUND: &[u8] = b"{\"cell_id\":\"c\",\"round\":0,\"repetition\":0,\"samples\":[]}\n";

fn record() -> &'static [u8] {
    static R: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ci-baseline/results.jsonl");
        let text = std::fs::read_to_string(p).unwrap();
        (text.lines().next().unwrap().to_string() + "\n").into_bytes()
    })
}

/// Writes `bytes` to `dir/name` and returns the path.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A refusal must be bad input (exit code 2) and name the file.
fn named(e: &exitbench::Error, path: &Path) -> Result<(), TestCaseError> {
    prop_assert!(e.is_bad_input(), "not exit code 2: {e}");
    prop_assert!(e.to_string().contains(&path.file_name().unwrap().to_string_lossy().to_string()), "{e} does not name {}", path.display());
    Ok(())
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn config_json(bytes in inputs(CONFIG)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = LlamaConfig::from_json(&text) {
            prop_assert!(e.is_bad_input(), "{e}");
            prop_assert!(e.to_string().contains("config.json") || e.to_string().contains(':'), "{e}");
        }
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "config.json", &bytes);
        if let Err(e) = LlamaConfig::from_file(&p) {
            named(&e, &p)?;
        }
    }

    #[test]
    fn safetensors_header(header in inputs(HEADER), data in 0u64..64, prefix in prop_oneof![Just(None), any::<u64>().prop_map(Some)]) {
        let _ = st_header::check_header(&header, data);
        let d = tempfile::tempdir().unwrap();
        let len = prefix.unwrap_or(header.len() as u64);
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend(std::iter::repeat_n(0u8, data as usize));
        let p = file(d.path(), "model.safetensors", &bytes);
        if let Err(e) = st_header::check_file(&p) {
            named(&e, &p)?;
        }
    }

    #[test]
    fn dataset_lines(bytes in inputs(DATASET)) {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "data.jsonl", &bytes);
        if let Err(e) = exitbench::data::dataset::read_jsonl(&p) {
            named(&e, &p)?;
        }
    }

    #[test]
    fn toml_settings(bytes in inputs(SETTINGS)) {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "sweep.toml", &bytes);
        if let Err(e) = exitbench::sweep::RawSettings::from_toml_file(&p) {
            named(&e, &p)?;
        }
    }

    #[test]
    fn round_records(bytes in inputs(ROUND)) {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "rounds.jsonl", &bytes);
        if let Err(e) = exitbench::sweep::rounds::read(d.path()) {
            named(&e, &p)?;
        }
    }
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn result_records(edits in edits()) {
        let bytes = apply(record(), &edits);
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "results.jsonl", &bytes);
        if let Err(e) = exitbench::results::store::read(&p) {
            named(&e, &p)?;
        }
    }
}

/// Found by `tokenizer_json`: a decoder whose `type` string is cut makes the tokenizers library
/// panic (an `expect` in its decoder deserializer); it must be exit code 2 naming the file.
#[test]
fn a_tokenizer_that_makes_the_library_panic_is_bad_input() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cricket-6l/tokenizer.json")).unwrap();
    let broken = text.replacen("\"decoder\": {\n    \"type\": \"ByteLevel\",", "\"decoder\": {\n    \"type\": \"Byt,", 1);
    assert_ne!(broken, text);
    let d = tempfile::tempdir().unwrap();
    let p = file(d.path(), "tokenizer.json", broken.as_bytes());
    let e = exitbench::model::TextTokenizer::from_file(&p, 1024).err().expect("refused");
    assert!(e.is_bad_input() && e.to_string().contains("tokenizer.json"), "{e}");
}

const INDEX: &[u8] = br#"{"metadata": {"total_size": 64}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}"#;

const MANIFEST: &[u8] = br#"{"exporter_version": 1, "files": [{"name": "embed.onnx", "bytes": 3, "sha256": "00"}], "export_hash": "ab"}"#;

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn tokenizer_json(bytes in inputs(include_bytes!("../models/cricket-6l/tokenizer.json"))) {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "tokenizer.json", &bytes);
        if let Err(e) = exitbench::model::TextTokenizer::from_file(&p, 1024) {
            named(&e, &p)?;
        }
    }

    #[test]
    fn shard_index(bytes in inputs(INDEX)) {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "model.safetensors.index.json", &bytes);
        if let Err(e) = exitbench::model::weights::decoder_weight_paths(d.path()) {
            prop_assert!(e.is_bad_input(), "not exit code 2: {e}");
            let text = e.to_string();
            prop_assert!(text.contains("model.safetensors.index.json") || text.contains("model-0000"), "{text} names neither the index nor a shard of {}", p.display());
        }
    }

    #[test]
    fn onnx_cache_manifest(bytes in inputs(MANIFEST)) {
        // A damaged manifest means "export again": never a panic, always a reason.
        let d = tempfile::tempdir().unwrap();
        file(d.path(), "manifest.json", &bytes);
        file(d.path(), "embed.onnx", b"abc");
        if let Err(why) = exitbench::backend::ort::export::verify(d.path()) {
            prop_assert!(!why.is_empty());
        }
    }
}
