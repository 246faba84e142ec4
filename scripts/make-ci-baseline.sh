#!/usr/bin/env bash
# Remakes tests/fixtures/ci-baseline/: the small grid that tests/sweep.rs
# (`ci_baseline_holds_on_an_unchanged_checkout`) reruns and checks with `exitbench check` on every
# CI run. Remake it, in the same change, whenever a cell key, the weights hash or a default moves.
# The flags here and in that test must stay the same (the test reads them from CI_BASELINE_FLAGS).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
out=$(mktemp -d)
# shellcheck disable=SC2046
./target/release/exitbench run $(cat tests/fixtures/ci-baseline/FLAGS) --out "$out/run" --quiet
mkdir -p tests/fixtures/ci-baseline
cp "$out/run/results.jsonl" tests/fixtures/ci-baseline/results.jsonl
rm -rf "$out"
echo "tests/fixtures/ci-baseline/results.jsonl remade"
