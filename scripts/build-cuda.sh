#!/usr/bin/env bash
# Builds exitbench with `--features cuda` on a machine with no GPU and no CUDA install, for the
# GPU machines the check targets (driver 580 / CUDA 13.0, H200 = sm_90a). From the package registries it
# installs the CUDA 13.0 compiler wheels into .cuda-tools/ (git-ignored), makes the `libX.so`
# names the wheels lack, generates link-time stub libraries from cudarc's own symbol lists (no
# wheel ships a libcuda stub, and cuBLAS alone is 420 MB), and builds into target/cuda/ so the
# CPU build in target/release stays usable.
#
# Usage: scripts/build-cuda.sh [--check]   (--check: `cargo check --features cuda` only)
# Result: target/cuda/release/exitbench and target/cuda/release/exitbench.xz.
# The binary needs the NVIDIA driver's libcuda.so.1 (and cuBLAS, cuRAND, cudart 13) at start-up,
# so it cannot run here: it is a separate build for GPU machines. The stubs live only in
# .cuda-tools/stubs/ and are used for linking; nothing points the loader at them.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=build
[ "${1:-}" = "--check" ] && mode=check
tools=$PWD/.cuda-tools
c=$tools/nvidia/cu13
start=$(date +%s)
if [ ! -x "$c/bin/nvcc" ] || [ ! -d "$c/nvvm" ]; then
  echo "installing the CUDA 13.0 compiler wheels into $tools" >&2
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$tools" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
[ -x "$c/bin/nvcc" ] || { echo "build-cuda: $c/bin/nvcc is missing after the install" >&2; exit 1; }
# The wheels ship versioned names only; -l needs the plain ones.
for lib in "$c"/lib/lib*.so.*; do
  [ -e "$lib" ] || continue
  base=${lib%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
# Link-time stubs: one empty function per symbol cudarc declares, with the real sonames.
cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, sys, os
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
stubs=$tools/stubs
mkdir -p "$stubs"
for spec in driver:cuda:libcuda.so.1 cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13 \
            curand:curand:libcurand.so.10 nvrtc:nvrtc:libnvrtc.so.13; do
  IFS=: read -r module name soname <<<"$spec"
  if [ ! -e "$stubs/lib$name.so" ]; then
    grep -o 'pub unsafe fn [A-Za-z0-9_]*' "$cudarc/src/$module/sys/mod.rs" | awk '{print "void " $4 "(void) {}"}' | sort -u > "$stubs/$name.c"
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$name.so" "$stubs/$name.c"
  fi
done
export PATH=$c/bin:$PATH CUDA_HOME=$c CUDA_PATH=$c CUDA_COMPUTE_CAP=90 \
  LIBRARY_PATH=$stubs:$c/lib${LIBRARY_PATH:+:$LIBRARY_PATH} CARGO_TARGET_DIR=$PWD/target/cuda
if [ "$mode" = check ]; then
  cargo check --release --features cuda
  echo "cargo check --features cuda passed in $(( $(date +%s) - start )) s" >&2
  exit 0
fi
cargo build --release --features cuda
bin=target/cuda/release/exitbench
xz -6 -T0 -k -f "$bin"
echo "built $bin ($(stat -c %s "$bin") bytes; $(stat -c %s "$bin.xz") with xz) in $(( $(date +%s) - start )) s" >&2
echo "it needs at start-up: $(readelf -d "$bin" | awk '/NEEDED/ {gsub(/[][]/, "", $5); printf "%s ", $5}')" >&2
