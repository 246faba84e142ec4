#!/usr/bin/env bash
# gpu-check.sh: a self-contained check for a GPU machine without a Rust toolchain or network (NVIDIA H200, driver 580 / CUDA
# 13.0, no network, no Rust; python3 with PyTorch + transformers, numpy, onnxruntime 1.30 CPU).
# It builds nothing: it runs the carried CUDA build of exitbench and the machine's own Python.
#
# Usage:
#   bash scripts/gpu-check.sh OUT_DIR          on the GPU machine (at most ~4.5 minutes)
#   bash scripts/gpu-check.sh --dry OUT_DIR    here, on the CPU build: the same steps on the CPU
#                                              with tiny settings (what CI runs; ~1-2 minutes)
# Environment:
#   EXITBENCH_BIN    binary to run [GPU: target/cuda/release/exitbench(.xz, decompressed to a temp
#                    dir); dry: target/release/exitbench]
#   GPU_CHECK_BUDGET_S  total seconds the steps may take [GPU: 265; dry: 600]
#   KEEP_WORK=1      keep the scratch directory (random model, raw results) instead of removing it
#
# Steps, in order of value; each is guarded (a failing or timed-out step is logged and the script
# goes on), its files land in OUT_DIR as soon as it ends, and the exit code is 1 if any failed:
#   1. exitbench info --json: NVML available?, GPU fingerprint            -> 1-info.json
#   2. NVML truth: ~20 s of bf16 matmuls (PyTorch) under `exitbench meter`: the NVML energy
#      counter against integrated instant power (within 5%), idle power (scripts/gpu-energy-
#      check.sh)                                                          -> 2-nvml-energy.tar.gz
#   3. candle CUDA sweep: models/cricket-6l in f32,f16,bf16, full depth + oracle + softmax-diff and
#      saturation at 0.9,0.7,0.5; and a random model of Llama-3.2-1B shape (exitbench
#      random-model, seed 1, bf16) in bf16 at full depth and static exits 4,8,12, no measures;
#      NVML energy                                                        -> 3-sweep-cuda.tar.gz
#   4. the same cricket-6l sweep on the machine's CPU, candle and ONNX Runtime -> 4-sweep-cpu.tar.gz
#   5. references: PyTorch + transformers (scripts/reference_torch.py: f32 with TF32 off on
#      cricket-6l, token ids against candle CUDA f32, 5 prompts x 32 tokens; decode ms/token beside
#      exitbench's on both models, bf16 for the 1B shape) and the NumPy float64 decoder
#      (scripts/reference_numpy.py) against candle CPU f32             -> 5-reference.tar.gz
#   6. `exitbench report` over the results of steps 3 and 4 (HTML, CSV, summary.md) -> 6-report.tar.gz
# plus gpu-check.log (setup facts, each step's wall time, status and output tail): 7 files at most.
#
# --dry: steps 2 and the torch part of 5 print "skipped (dry: no GPU)"; step 3 runs on the CPU
# with 2 samples x 8 tokens, the 1B shape shrunk (hidden 256, 16 layers, vocabulary 16384; same
# head/GQA/llama3-rope/tied layout) with 1 sample x 4 tokens; step 5 compares the NumPy float64
# reference with candle CPU f32 on cricket-6l (5 prompts x 32 tokens) and on the shrunk random
# model (2 prompts x 16 tokens) and fails on any difference not explained by a near-tie.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
if [ "${1:-}" = --dry ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu-check.sh [--dry] OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
LOG=$OUT/gpu-check.log
: >"$LOG"
now() { date +%s.%N; }
T0=$(now)
BUDGET=${GPU_CHECK_BUDGET_S:-$([ $DRY = 1 ] && echo 600 || echo 265)}
W=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
remaining() { awk -v t0="$T0" -v b="$BUDGET" -v now="$(now)" 'BEGIN { printf "%d", t0 + b - now }'; }

cleanup() {
    if [ -s "$W/random-model.pid" ] && [ ! -e "$W/random-model.rc" ]; then
        kill "$(cat "$W/random-model.pid")" 2>/dev/null
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "scratch kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'log "gpu-check: interrupted after $(since "$T0") s"; exit 143' TERM INT

# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
if [ $DRY = 1 ]; then
    DEVICE=cpu SAMPLES=2 TOKENS=8 BIG_SAMPLES=1 BIG_TOKENS=4 BIG_WARMUP=0
    PY=$ROOT/.venv/bin/python
    [ -x "$PY" ] || PY=python3
    BIN=${EXITBENCH_BIN:-$ROOT/target/release/exitbench}
    BIGMODEL=$W/llama-3.2-1b-shrunk
else
    DEVICE=cuda:0 SAMPLES=10 TOKENS=32 BIG_SAMPLES=10 BIG_TOKENS=32 BIG_WARMUP=1
    PY=python3
    BIN=${EXITBENCH_BIN:-}
    BIGMODEL=$W/llama-3.2-1b-random
fi
MODEL=models/cricket-6l
GRID=(--measure softmax-diff,saturation --thresholds 0.9,0.7,0.5 --samples "$SAMPLES"
      --max-new-tokens "$TOKENS" --repetitions 1 --warmup 1 --min-window 1)
printf 'measure = []\n' >"$W/no-measures.toml"

log "gpu-check $([ $DRY = 1 ] && echo '--dry ')started $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname 2>/dev/null || cat /proc/sys/kernel/hostname); budget ${BUDGET} s; out $OUT"

# ------------------------------------------------------------------------------------------------
# Setup: libraries, the binary, glibc, ONNX Runtime, prompts, the random model (in the background)
# ------------------------------------------------------------------------------------------------
# The CUDA libraries of the machine's PyTorch (nvidia-* wheels: site-packages/nvidia/cu13/lib, or
# the older nvidia/<name>/lib layout), one directory a line.
probe_cuda_libdirs() {
    python3 - <<'EOF'
import glob, os
roots = []
try:
    import nvidia  # the CUDA wheels PyTorch depends on (a namespace package)
    roots += list(nvidia.__path__)
except Exception:
    pass
for pat in ("/usr/lib/python3*/site-packages/nvidia", "/usr/local/lib/python3*/*-packages/nvidia",
            "/usr/lib/python3/dist-packages/nvidia", os.path.expanduser("~/.local/lib/python3*/site-packages/nvidia")):
    roots += glob.glob(pat)
out = []
for r in roots:
    for d in [os.path.join(r, "cu13", "lib")] + sorted(glob.glob(os.path.join(r, "*", "lib"))):
        d = os.path.realpath(d)
        if os.path.isdir(d) and glob.glob(os.path.join(d, "lib*.so*")) and d not in out:
            out.append(d)
print("\n".join(out))
EOF
}

if [ $DRY = 0 ]; then
    libdirs=()
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && libdirs+=("$d"); done
    while IFS= read -r d; do [ -n "$d" ] && libdirs+=("$d"); done < <(probe_cuda_libdirs 2>/dev/null)
    [ -d /usr/local/cuda/lib64 ] && libdirs+=(/usr/local/cuda/lib64)
    LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
    log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    if [ -z "$BIN" ]; then
        if [ -f target/cuda/release/exitbench.xz ]; then
            mkdir -p "$W/bin"
            if command -v xz >/dev/null; then
                xz -dc target/cuda/release/exitbench.xz >"$W/bin/exitbench"
            else
                python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                    target/cuda/release/exitbench.xz "$W/bin/exitbench"
            fi
            chmod +x "$W/bin/exitbench"
            BIN=$W/bin/exitbench
            log "binary: decompressed target/cuda/release/exitbench.xz ($(stat -c %s target/cuda/release/exitbench.xz) bytes) -> $(stat -c %s "$BIN") bytes"
        else
            BIN=$ROOT/target/cuda/release/exitbench
        fi
    fi
    if [ -z "${ORT_DYLIB_PATH:-}" ]; then
        ort=$(python3 -c 'import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])' 2>/dev/null)
        if [ -n "$ort" ]; then export ORT_DYLIB_PATH=$ort; fi
    fi
    log "ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-<unset: exitbench searches .venv, then the onnxruntime of python3>}"
fi
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac
log "binary: $BIN ($("$BIN" --version 2>&1 | head -1))"
have_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
need_glibc=$( (objdump -T "$BIN" 2>/dev/null || strings "$BIN" 2>/dev/null) | grep -o 'GLIBC_2\.[0-9]*' | sort -uV | tail -1)
[ -n "$need_glibc" ] || need_glibc=$(python3 -c 'import re, sys; print(max(set(re.findall(rb"GLIBC_2\.[0-9]+", open(sys.argv[1], "rb").read())), key=lambda v: int(v.split(b".")[1])).decode())' "$BIN" 2>/dev/null)
if [ -n "$have_glibc" ] && [ -n "$need_glibc" ] && [ "$(printf '%s\n' "${need_glibc#GLIBC_}" "$have_glibc" | sort -V | tail -1)" = "$have_glibc" ]; then
    verdict=ok
else
    verdict="TOO OLD or unknown"
fi
log "glibc: machine $have_glibc ($(ldd --version 2>&1 | head -1)); binary needs up to ${need_glibc:-?}: $verdict"
missing=$(ldd "$BIN" 2>&1 | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
[ -n "$missing" ] && log "ldd: NOT FOUND: $missing"
ldd "$BIN" 2>&1 | grep -E 'libcuda|libcublas|libcurand|libcudart|libnvrtc' | sed 's/^\s*/ldd: /' | tee -a "$LOG"

# The prompts every reference uses: the first samples of synth:test, as the sweeps take them.
"$BIN" data synth --split test --n 10 --out "$W/prompts.jsonl" >/dev/null 2>"$W/prompts.err" \
    || log "exitbench data synth failed: $(tail -3 "$W/prompts.err")"

# The random model of Llama-3.2-1B shape, written in the background (~45 s of one CPU core for
# the full shape) while steps 1-3 run; step 3 waits for it.
if [ $DRY = 1 ]; then
    mkdir -p "$W/shrunk"
    "$PY" - models/shapes/llama-3.2-1b/config.json "$W/shrunk/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
# Same layout as Llama-3.2-1B (16 layers, head_dim 64 != hidden / heads here, GQA 4:1, llama3
# rope scaling, tied embeddings), small enough for two CPU cores.
c.update(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
         vocab_size=16384, bos_token_id=16000, eos_token_id=16001, max_position_embeddings=16384)
json.dump(c, open(sys.argv[2], "w"), indent=1)
EOF
    BIGCFG=$W/shrunk/config.json
else
    BIGCFG=models/shapes/llama-3.2-1b/config.json
fi
( "$BIN" random-model --config "$BIGCFG" --seed 1 --dtype bf16 --out "$BIGMODEL" >"$W/random-model.log" 2>&1 &
  echo $! >"$W/random-model.pid"; wait $!; echo $? >"$W/random-model.rc" ) &
log "setup done in $(since "$T0") s (random model of $BIGCFG being written in the background)"

export ROOT OUT W DRY DEVICE SAMPLES TOKENS BIG_SAMPLES BIG_TOKENS BIG_WARMUP PY BIN BIGMODEL MODEL
export GRID_STR="${GRID[*]}"

# ------------------------------------------------------------------------------------------------
# Helpers the steps use (exported: each step runs in its own `bash -c` under `timeout`)
# ------------------------------------------------------------------------------------------------

# check_results DIR EXPECT_NVML: a table of the sweep's cells; fails on an `error` cell, on an
# `unsupported` one other than ONNX Runtime's bf16 on the CPU, and (EXPECT_NVML=1) on a CUDA cell
# whose energy is not NVML's.
check_results() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
path, want_nvml = sys.argv[1] + "/results.jsonl", sys.argv[2] == "1"
try:
    rows = [json.loads(l) for l in open(path) if l.strip()]
except OSError as e:
    print(f"no results: {e}")
    sys.exit(1)
bad = []
for r in rows:
    k, st = r["key"], r["status"]
    label = {"full": "full", "full-unsplit": "full-unsplit", "oracle": "oracle",
             "static": f"static@{k.get('static_layer')}"}.get(k["baseline"], f"{k['measure']}@{k['threshold']}")
    e = r.get("energy") or {}
    if st == "ok":
        jpt = e.get("j_per_token")
        print(f"  {k['backend']:6} {k['device']:6} {k['dtype']:4} {label:18} ok  {r['ms_per_token']['median']:8.3f} ms/token"
              f"  avg layers {r['avg_layers']:5.2f}/{r['num_layers']}  energy {e.get('source')}"
              + (f" {jpt:.4g} J/token" if jpt is not None else ""))
        if want_nvml and k["device"].startswith("cuda") and "nvml" not in (e.get("source") or ""):
            bad.append(f"{label} {k['dtype']}: energy source {e.get('source')!r}, not NVML")
    else:
        print(f"  {k['backend']:6} {k['device']:6} {k['dtype']:4} {label:18} {st}: {(r.get('reason') or '')[:160]}")
        if not (st == "unsupported" and k["backend"] == "ort" and k["dtype"] == "bf16"):
            bad.append(f"{k['backend']} {k['dtype']} {label}: {st}")
print(f"  {len(rows)} cells: {sum(r['status'] == 'ok' for r in rows)} ok")
for b in bad:
    print(f"  PROBLEM: {b}")
sys.exit(1 if bad or not rows else 0)
EOF
}

wait_random_model() {
    while [ ! -e "$W/random-model.rc" ]; do sleep 1; done
    cat "$W/random-model.log"
    [ "$(cat "$W/random-model.rc")" = 0 ]
}

step1() {
    "$BIN" info --json >"$SD/info.json" || return 1
    "$PY" - "$SD/info.json" "$DRY" <<'EOF'
import json, sys
d, dry = json.load(open(sys.argv[1])), sys.argv[2] == "1"
for m in d["meters"]:
    print(f"  meter {m['name']:9} available={m['available']!s:5} used={m['used']!s:5} {m['why'][:200]}")
hw = d["hardware"]
print(f"  energy source label: {d['source_label']}")
print(f"  machine {hw.get('machine_id')} host {hw.get('host')}: {hw.get('cpu_model')}, {hw.get('logical_cpus')} CPUs, "
      f"{hw.get('memory_mib')} MiB, {hw.get('os')}; triad {hw.get('mem_bandwidth_gb_s', 0):.1f} GB/s (1 thread), "
      f"{hw.get('mem_bandwidth_all_gb_s', 0):.1f} GB/s (all)")
print(f"  GPU fingerprint: {json.dumps(hw.get('gpu'))}")
print(f"  ONNX Runtime: {hw.get('onnxruntime_version')}")
nvml = any(m["name"] == "nvml" and m["available"] for m in d["meters"])
print(f"  NVML available: {nvml}")
sys.exit(0 if nvml or dry else 1)
EOF
}

step2() {
    OUT=$SD LOAD_S=20 bash "$ROOT/scripts/gpu-energy-check.sh" "$BIN"
}

step3() {
    local rc=0
    # shellcheck disable=SC2086
    "$BIN" run --model "$MODEL" --backend candle --device "$DEVICE" --dtype f32,f16,bf16 $GRID_STR \
        --idle-seconds 5 --out "$SD/cricket-6l" || rc=1
    check_results "$SD/cricket-6l" "$([ "$DRY" = 0 ] && echo 1 || echo 0)" || rc=1
    echo "waiting for the random model (exitbench random-model):"
    wait_random_model || { echo "random-model failed"; return 1; }
    "$BIN" run --config "$W/no-measures.toml" --model "$BIGMODEL" --backend candle --device "$DEVICE" --dtype bf16 \
        --static-exit 4,8,12 --no-oracle --samples "$BIG_SAMPLES" --max-new-tokens "$BIG_TOKENS" \
        --warmup "$BIG_WARMUP" --repetitions 1 --min-window 1 --idle-seconds 0 --out "$SD/llama-1b" || rc=1
    check_results "$SD/llama-1b" "$([ "$DRY" = 0 ] && echo 1 || echo 0)" || rc=1
    return $rc
}

step4() {
    local rc=0
    # shellcheck disable=SC2086
    "$BIN" run --model "$MODEL" --backend candle,ort --device cpu --dtype f32,f16,bf16 $GRID_STR \
        --idle-seconds 0 --out "$SD/cricket-6l-cpu" || rc=1
    check_results "$SD/cricket-6l-cpu" 0 || rc=1
    return $rc
}

step5() {
    local rc=0
    cp "$W/prompts.jsonl" "$SD/prompts.jsonl"
    if [ "$DRY" = 0 ]; then
        echo "PyTorch + transformers reference (f32 TF32 off on $MODEL; bf16 on the 1B shape):"
        python3 "$ROOT/scripts/reference_torch.py" --bin "$BIN" --dataset "$W/prompts.jsonl" --n 5 --max-new-tokens 32 \
            --device cuda:0 --out "$SD/torch.json" \
            --case "$MODEL:f32:strict:$W/step3/cricket-6l/results.jsonl" \
            --case "$BIGMODEL:bf16::$W/step3/llama-1b/results.jsonl" || rc=1
    else
        echo "PyTorch reference: skipped (dry: no GPU; the NumPy float64 reference stands in)"
    fi
    echo "NumPy float64 reference vs exitbench candle cpu f32 on $MODEL (5 prompts x 32 tokens):"
    "$PY" "$ROOT/scripts/reference_numpy.py" --bin "$BIN" --model "$MODEL" --dataset "$W/prompts.jsonl" --n 5 \
        --max-new-tokens 32 --device cpu --exitbench-results "$W/step4/cricket-6l-cpu/results.jsonl" \
        --out "$SD/numpy-cricket-6l.json" || rc=1
    if [ "$DRY" = 1 ]; then
        echo "NumPy float64 reference vs exitbench candle cpu f32 on the shrunk 1B-shape random model (2 prompts x 16 tokens):"
        "$PY" "$ROOT/scripts/reference_numpy.py" --bin "$BIN" --model "$BIGMODEL" --dataset "$W/prompts.jsonl" --n 2 \
            --max-new-tokens 16 --device cpu --out "$SD/numpy-llama-1b-shrunk.json" || rc=1
    fi
    return $rc
}

step6() {
    local dirs=() d
    for d in "$W/step3/cricket-6l" "$W/step3/llama-1b" "$W/step4/cricket-6l-cpu"; do
        if [ -s "$d/results.jsonl" ]; then dirs+=("$d"); else echo "missing: $d/results.jsonl"; fi
    done
    [ ${#dirs[@]} -gt 0 ] || return 1
    "$BIN" report "${dirs[@]}" --out "$SD/report" || return 1
    ls -l "$SD/report"
    [ ${#dirs[@]} -eq 3 ]
}
export -f check_results wait_random_model step1 step2 step3 step4 step5 step6

# ------------------------------------------------------------------------------------------------
# The step runner
# ------------------------------------------------------------------------------------------------
FAILED=()
SUMMARY=()

# run_step NUM NAME TITLE CAP_S RESERVE_S: runs stepNUM under a timeout of min(CAP_S, the budget
# left less RESERVE_S, the least the later steps need), packs its files into OUT_DIR, logs its
# wall time, status and output tail.
run_step() {
    local num=$1 name=$2 title=$3 cap=$4 reserve=$5
    local left; left=$(($(remaining) - reserve))
    local t=$((cap < left ? cap : left))
    if [ "$t" -lt 3 ]; then
        log "== step $num ($title): NOT RUN: the ${BUDGET} s budget is spent"
        FAILED+=("$num") SUMMARY+=("$num|$name|not run|0")
        return
    fi
    local sd=$W/step$num
    mkdir -p "$sd"
    log "== step $num: $title (limit ${t} s, at +$(since "$T0") s)"
    local s; s=$(now)
    SD=$sd timeout -k 10 "$t" bash -c "step$num" 2>&1 | tee "$sd/step.log" | sed -u 's/^/   | /'
    local rc=${PIPESTATUS[0]}
    local dt; dt=$(since "$s")
    if [ "$num" = 1 ]; then
        [ -s "$sd/info.json" ] && cp "$sd/info.json" "$OUT/1-info.json"
    else
        tar czf "$OUT/$num-$name.tar.gz" -C "$sd" . 2>>"$LOG"
    fi
    local st=ok
    case $rc in
        0) ;;
        124 | 137) st="TIMED OUT after ${t} s" ;;
        *) st="FAILED (exit $rc)" ;;
    esac
    [ "$st" = ok ] || FAILED+=("$num")
    {
        echo "   output (last 40 lines):"
        tail -n 40 "$sd/step.log" | sed 's/^/   | /'
    } >>"$LOG"
    log "-- step $num ($title): $st in $dt s"
    SUMMARY+=("$num|$name|$st|$dt")
}

skip_step() {
    log "== step $1 ($3): skipped (dry: no GPU)"
    SUMMARY+=("$1|$2|skipped (dry: no GPU)|0")
}

# Caps, and what each step leaves for the later ones (the least they need: 4 -> 30 s,
# 5 -> 45 s, 6 -> 10 s), so that a slow sweep cannot starve the references and the report.
run_step 1 info "exitbench info: NVML and the GPU fingerprint" 30 0
if [ $DRY = 1 ]; then
    skip_step 2 nvml-energy "NVML counter vs instant power under a PyTorch load"
else
    run_step 2 nvml-energy "NVML counter vs instant power under a PyTorch load" 60 145
fi
run_step 3 "sweep-$( [ $DRY = 1 ] && echo dry-cpu || echo cuda )" \
    "candle sweep on $DEVICE: cricket-6l f32/f16/bf16 and the 1B shape bf16" 120 85
run_step 4 sweep-cpu "cricket-6l sweep on the CPU, candle and ONNX Runtime" 100 55
run_step 5 reference "$( [ $DRY = 1 ] && echo 'NumPy float64 reference' || echo 'PyTorch + NumPy references')" 80 10
run_step 6 report "merged report of steps 3 and 4" 30 0

log ""
log "step  name                    status                       wall s"
for row in "${SUMMARY[@]}"; do
    IFS='|' read -r n name st dt <<<"$row"
    log "$(printf '%-5s %-23s %-28s %6s' "$n" "$name" "$st" "$dt")"
done
log "total wall time: $(since "$T0") s$([ $DRY = 1 ] && echo ' (dry run)')"
log "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
if [ ${#FAILED[@]} -gt 0 ]; then
    log "gpu-check: FAILED steps: ${FAILED[*]}"
    exit 1
fi
log "gpu-check: all steps passed"
