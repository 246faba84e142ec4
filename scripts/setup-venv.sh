#!/usr/bin/env bash
# Create (idempotently) the Python virtual environment: the tools that generate test fixtures
# (e.g. tests/fixtures/rouge via scripts/make_rouge_fixture.py) and ONNX Runtime, whose
# libonnxruntime.so the `ort` backend loads at run time (.venv/lib/python3*/site-packages/
# onnxruntime/capi/). The wheel is installed without its Python dependencies: only the library
# is used.
# Usage: scripts/setup-venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r scripts/requirements.txt
# Pinned to the version the lent GPU machines have (ort's api-30 accepts 1.30 and newer).
.venv/bin/pip install -q --no-deps onnxruntime==1.30.0
