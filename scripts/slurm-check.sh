#!/usr/bin/env bash
# Runs the Slurm template as a 3-task job array over a small sweep, merges the shards and checks
# the merged cells equal an unsharded run's (cell ids and deterministic figures).
# Needs a running cluster (scripts/slurm-start.sh) and a built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${EXITBENCH:-$PWD/target/release/exitbench}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(--model models/cricket-6l --dataset synth:test --samples 2 --max-new-tokens 8 --threads 1,2,3
       --measure softmax-diff --thresholds 0.9 --oracle --warmup 0 --min-window 0 --idle-seconds 0)
job=$(EXITBENCH=$bin sbatch --parsable --wait --array=1-3 --chdir="$PWD" --output="$work/slurm-%a.out" \
      scripts/slurm-sweep.sbatch "$work" "${flags[@]}")
echo "slurm job $job finished"
for i in 1 2 3; do
  [ -s "$work/shard-$i/results.jsonl" ] || { echo "shard $i wrote nothing:"; cat "$work/slurm-$i.out"; exit 1; }
done
"$bin" merge "$work"/shard-1 "$work"/shard-2 "$work"/shard-3 --out "$work/merged" >/dev/null
"$bin" run "${flags[@]}" --out "$work/whole" --quiet >/dev/null
key() { python3 -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    k = dict(r["key"]); k.pop("machine")  # the fingerprint may follow the CPUs a task is bound to
    print(json.dumps(k, sort_keys=True), r["tokens"], r["avg_layers"], r["rouge"]["rougeL"]["mean"], [o["text"] for o in r["outputs"]])
' "$1" | sort; }
if diff <(key "$work/merged/results.jsonl") <(key "$work/whole/results.jsonl"); then
  echo "slurm-check: merged shards equal the unsharded sweep ($(wc -l < "$work/whole/results.jsonl") cells)"
else
  echo "slurm-check: merged shards differ from the unsharded sweep" >&2
  exit 1
fi
