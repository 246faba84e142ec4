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

fn classifier_info() -> serde_json::Value {
    exitbench::model::weights::read_classifier_info(&model_dir()).unwrap().expect("the shipped model has exit_classifier.json")
}

#[test]
fn card_generator_version_matches_this_build() {
    // The version training recorded with the weights, not the one of whatever build wrote the card.
    let state = exitbench::train::checkpoint::read_state(&model_dir()).unwrap().expect("the shipped model keeps checkpoint/state.json");
    assert_eq!(card().generator_version, state.generator_version, "card.json and checkpoint/state.json disagree");
    assert_eq!(state.generator_version, synth::GENERATOR_VERSION, "the shipped model was trained on another generator version");
}

#[test]
fn shipped_classifiers_belong_to_the_shipped_weights() {
    let info = classifier_info();
    let now = exitbench::model::weights::decoder_fingerprint(&model_dir()).unwrap();
    assert_eq!(info["decoder_fingerprint"].as_str(), Some(now.as_str()), "retrain with `exitbench train --classifier-only`");
}

#[test]
fn shipped_model_reproduces_the_card_output() {
    let card = card();
    exitbench::backend::candle::set_cpu_threads(1);
    let m = LoadedModel::load(&model_dir(), &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None }).unwrap();
    let index: usize = card.reproduce.id.trim_start_matches("test-").parse().unwrap();
    let got = exitbench::card::reproduce(&m, index, card.reproduce.max_new_tokens).unwrap();
    assert_eq!(got.token_ids, card.reproduce.token_ids);
    assert_eq!(got.output, card.reproduce.output);
}

#[test]
fn card_describes_the_shipped_weights_and_classifiers() {
    // A card written before more training or a classifier retrain would describe other weights.
    let card = card();
    let state = exitbench::train::checkpoint::read_state(&model_dir()).unwrap().unwrap();
    assert_eq!(card.steps_done, Some(state.step), "card.json was written at another step: `exitbench calibrate ... --write-card`");
    let info = classifier_info();
    assert_eq!(card.classifier.as_ref(), Some(&info), "card.json describes other exit classifiers: `exitbench calibrate ... --write-card`");
}

#[test]
fn readme_is_the_rendered_card() {
    let path = model_dir().join("README.md");
    let rendered = exitbench::card::render(&card());
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap();
    assert_eq!(shipped, rendered, "README.md is not card.json rendered by this build (UPDATE_GOLDEN=1 rewrites it)");
}
