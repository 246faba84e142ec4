//! The shipped model (models/cricket-6l) against its model card: trained on this build's
//! generator version, and reproducing the full-depth output the card records.

use exitbench::data::synth;
use exitbench::model::{LoadOptions, LoadedModel, Precision};
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(exitbench::DEFAULT_MODEL)
}

fn card() -> exitbench::card::Card {
    let p = model_dir().join("card.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn card_generator_version_matches_this_build() {
    assert_eq!(card().generator_version, synth::GENERATOR_VERSION, "the shipped model was trained on another generator version");
}

#[test]
fn shipped_model_reproduces_the_card_output() {
    let card = card();
    exitbench::backend::set_cpu_threads(1);
    let m = LoadedModel::load(&model_dir(), &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None }).unwrap();
    let index: usize = card.reproduce.id.trim_start_matches("test-").parse().unwrap();
    let got = exitbench::card::reproduce(&m, index, card.reproduce.max_new_tokens).unwrap();
    assert_eq!(got.token_ids, card.reproduce.token_ids);
    assert_eq!(got.output, card.reproduce.output);
}
