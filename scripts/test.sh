#!/usr/bin/env bash
# Sets up everything the tests need and runs them (the README's test command; CI calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
cargo test --release --all-targets
