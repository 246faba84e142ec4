#!/usr/bin/env bash
# Remakes the committed sample report reports/default/: the default sweep (`exitbench run` with no
# grid flags: the shipped model, synth:test, 40 samples, every CPU backend in f32, all four
# measures at 0.95 … 0.5, full depth and oracle) run on this machine, then its reports.
# Usage: scripts/make-sample-report.sh [OUT_DIR]   (default reports/default)
# Run it on an otherwise idle machine: the timings and energy figures are this machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/default}
cargo build --release --quiet
rm -rf "$out"
start=$(date +%s)
./target/release/exitbench run --out "$out" 2>&1 | tee "$out.terminal.txt"
end=$(date +%s)
mv "$out.terminal.txt" "$out/terminal-summary.txt"
{
  echo "# Sample report: the default sweep"
  echo
  echo "Made by \`scripts/make-sample-report.sh\` on $(date -u +%Y-%m-%d) (exitbench $(./target/release/exitbench --version | awk '{print $2}'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
  echo "The sweep (\`exitbench run --out $out\`, no grid flags) took $((end - start)) s of wall time on"
  echo "$(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))."
  echo
  echo "- [summary.md](summary.md): the headline table per configuration"
  echo "- [report.html](report.html): the self-contained page with plots (open it in a browser)"
  echo "- [results.csv](results.csv): one row per cell"
  echo "- results.jsonl: the raw records (\`exitbench report $out --out DIR\` remakes the reports;"
  echo "  \`exitbench check --baseline $out --current NEW\` compares a new run with it)"
  echo "- [terminal-summary.txt](terminal-summary.txt): what the run printed"
} > "$out/README.md"
echo "wrote $out in $((end - start)) s"
