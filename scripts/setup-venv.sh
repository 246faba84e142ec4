#!/usr/bin/env bash
# Create (idempotently) the Python virtual environment: the tools that generate test fixtures
# (e.g. tests/fixtures/rouge via scripts/make_rouge_fixture.py) and ONNX Runtime, whose
# libonnxruntime.so the `ort` backend loads at run time (.venv/lib/python3*/site-packages/
# onnxruntime/capi/).
# Usage: scripts/setup-venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r scripts/requirements.txt
