#!/usr/bin/env bash
# GPU energy check for a GPU machine without a Rust toolchain or network. Builds nothing: runs a carried
# exitbench binary and the machine's own PyTorch. Measures GPU 0 idle for 5 s, then ~20 s of
# back-to-back bf16 matmuls under `exitbench meter`, and prints the NVML total-energy counter
# against integrated instant power (they should agree within 5%) and the idle power.
# Usage: scripts/gpu-energy-check.sh [EXITBENCH_BINARY]   (default ./target/release/exitbench)
# Writes info.json, idle.json, load.json and summary.txt under $OUT (or a temp dir). Exit 1 when
# the two GPU figures differ by more than 5% or either is missing.
set -euo pipefail
BIN=${1:-./target/release/exitbench}
OUT=${OUT:-$(mktemp -d)}
LOAD_S=${LOAD_S:-20}
mkdir -p "$OUT"
"$BIN" info --json >"$OUT/info.json"
"$BIN" meter --json --gpus 0 --seconds 5 >"$OUT/idle.json"
# The command's stdout would precede the JSON on ours: the load prints nothing.
"$BIN" meter --json --gpus 0 -- python3 -c "
import time, torch
a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)
b = torch.randn_like(a)
torch.cuda.synchronize()
t = time.time()
while time.time() - t < $LOAD_S:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
" >"$OUT/load.json"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
idle, load = (json.load(open(f"{out}/{n}.json")) for n in ("idle", "load"))
def reading(rep, meter):
    return next((r for r in rep["window"]["readings"] if r["meter"] == meter), None)
for r in (reading(idle, "nvml:0"), reading(idle, "nvml-instant:0")):
    if r:
        print(f"idle  {r['meter']:<16} {r['avg_w']:8.1f} W over {r['duration_s']:.1f} s")
ok = True
for r in (reading(load, "nvml:0"), reading(load, "nvml-instant:0")):
    if r is None:
        ok = False
        continue
    peak = f", peak {r['peak_w']:.1f} W" if r.get("peak_w") else ""
    print(f"load  {r['meter']:<16} {r['energy_j']:10.1f} J {r['avg_w']:8.1f} W avg{peak}, "
          f"{r['samples']} samples, update period {r['update_period_s']}")
    for w in r["warnings"]:
        print(f"      warning: {w}")
cmp = load["comparisons"]
if cmp and cmp[0]["diff_pct"] is not None:
    d = cmp[0]["diff_pct"]
    ok = ok and abs(d) <= 5.0
    print(f"counter vs instant: {cmp[0]['diff_j']:+.1f} J ({d:+.2f}%) -> {'PASS' if abs(d) <= 5.0 else 'FAIL'} (within 5%)")
else:
    ok = False
    print("counter vs instant: not both available -> FAIL")
print(f"command exit code {load['exit_code']}")
sys.exit(0 if ok and load["exit_code"] == 0 else 1)
EOF
