#!/usr/bin/env bash
# A peer comparison with llama.cpp, the decoder most users would run instead, and with llama2.c's
# run.c (not part of CI).
#
# Builds llama.cpp CPU-only from the llama-cpp-python source package on PyPI (it vendors
# llama.cpp and its gguf-py), converts the same weights to an f32 GGUF (q/k rows permuted to
# llama.cpp's rotary layout), checks that both decoders' greedy tokens agree from the same prompt
# ids, then alternates `exitbench generate` (candle, decode tokens/s from its per-token times) and
# `llama-bench -p 0 -n TOKENS` (its tg tokens/s) RUNS times per model and thread count, and prints
# medians, min–max and ratios. Neither run is pinned. At one thread it also runs llama2.c's run.c
# (pinned commit, checked by hash; built -Ofast -march=native without OpenMP, so one thread) through
# scripts/peer_runc.c, which feeds the same prompt ids to run.c's own forward pass, on the shapes
# run.c can hold (RoPE base 10000, RMSNorm eps 1e-5: embedded and 15m), greedy tokens checked too.
#
# Usage: scripts/peer-llamacpp.sh [--shapes embedded,15m,1b] [--runs 7] [--tokens 128]
#                                 [--threads 1,all] [--work DIR] [--runc-src FILE]
#   --runc-src FILE   run.c from a local file (its hash is checked all the same) instead of
#                     downloading it from GitHub
#   embedded  models/cricket-6l (real weights)
#   15m, 1b   random weights of stories15M's and Llama-3.2-1B's shapes, written once as
#             safetensors (scripts/peer_llamacpp.py shape; the 1B shape is 4.9 GB, and as much
#             again as GGUF)
# Needs python3, a C/C++ compiler and network access to PyPI (the first time); everything goes
# under --work (default target/peer-llamacpp).
set -euo pipefail
cd "$(dirname "$0")/.."
shapes=embedded,15m
runs=7
tokens=128
threads_list=1,all
work=target/peer-llamacpp
runc_src=
while [ $# -gt 0 ]; do
    case "$1" in
        --shapes) shapes=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --tokens) tokens=$2; shift 2 ;;
        --threads) threads_list=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --runc-src) runc_src=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "peer-llamacpp: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
version=0.3.36
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
prompt="The Hawks beat the Foxes by 47 runs at Kelmarsh Oval."
mkdir -p "$work"
work=$(cd "$work" && pwd)

# 1. Tools: numpy and gguf-py's dependencies, cmake and ninja, all from PyPI.
[ -x "$work/venv/bin/python" ] || python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q numpy pyyaml tqdm requests cmake ninja
py="$work/venv/bin/python"
export PATH="$work/venv/bin:$PATH"

# 2. The source package, checked against its hash.
sdist="$work/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
    "$py" - "$version" "$sdist" <<'EOF'
import re, sys, urllib.request
version, out = sys.argv[1], sys.argv[2]
# The simple index (what pip reads), which registry mirrors and proxies serve where the JSON API
# may not be; the hash is checked below.
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/").read().decode()
url = next(u for u in re.findall(r'href="([^"#]+)', page) if u.endswith(f"/llama_cpp_python-{version}.tar.gz"))
urllib.request.urlretrieve(url, out)
EOF
fi
echo "$sha  $sdist" | sha256sum -c --quiet
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
[ -d "$src" ] || tar xzf "$sdist" -C "$work"

# 3. llama-bench and the greedy checker, CPU only, tuned for this CPU (as a user would build).
if [ ! -x "$work/build/bin/llama-bench" ]; then
    cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF > "$work/cmake.log"
    cmake --build "$work/build" --target llama-bench llama -j "$(nproc)" > "$work/build.log"
fi
cc -O2 -I "$src/include" -I "$src/ggml/include" scripts/peer_greedy.c -L "$work/build/bin" -lllama -Wl,-rpath,"$work/build/bin" -o "$work/peer_greedy"

# 3b. llama2.c's run.c at a pinned commit, checked by its hash, with the driver that feeds it ids.
runc_commit=350e04fe35433e6d2941dce5a1f53308f87058eb
runc_sha=9c4f2d5c6ae01b71726d1cc37530d71e60bff0ec7cc012565f16a43c1ca658bd
mkdir -p "$work/llama2c"
if [ -n "$runc_src" ]; then
    cp "$runc_src" "$work/llama2c/run.c.part"
    mv "$work/llama2c/run.c.part" "$work/llama2c/run.c"
elif [ ! -f "$work/llama2c/run.c" ]; then
    "$py" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" \
        "https://raw.githubusercontent.com/karpathy/llama2.c/$runc_commit/run.c" "$work/llama2c/run.c.part"
    mv "$work/llama2c/run.c.part" "$work/llama2c/run.c"
fi
echo "$runc_sha  $work/llama2c/run.c" | sha256sum -c --quiet || { echo "peer-llamacpp: $work/llama2c/run.c is not run.c at $runc_commit; remove it to fetch it again" >&2; exit 1; }
cc -Ofast -march=native -I "$work/llama2c" scripts/peer_runc.c -lm -o "$work/peer_runc" 2> "$work/llama2c/build.log" \
    || { cat "$work/llama2c/build.log" >&2; echo "peer-llamacpp: building run.c failed" >&2; exit 1; }

# 4. exitbench.
cargo build --release --quiet
exe=$(pwd)/target/release/exitbench

results="$work/results.jsonl"
: > "$results"
all=$(nproc)
for shape in ${shapes//,/ }; do
    case "$shape" in
        embedded) dir=models/cricket-6l ;;
        15m|1b)
            dir="$work/models/$shape"
            [ -f "$dir/model.safetensors" ] || "$py" scripts/peer_llamacpp.py shape "$shape" "$dir" ;;
        *) echo "peer-llamacpp: unknown shape $shape (embedded, 15m, 1b)" >&2; exit 2 ;;
    esac
    gguf="$work/models/$shape.gguf"
    mkdir -p "$work/models"
    [ -f "$gguf" ] || PYTHONPATH="$src/gguf-py" "$py" scripts/peer_llamacpp.py gguf "$dir" "$gguf"

    # Greedy tokens from the same prompt ids, one thread each.
    check=32
    "$exe" generate --model "$dir" --prompt "$prompt" --max-new-tokens "$check" --ignore-eos --threads 1 --json > "$work/check.json"
    ids=$("$py" -c "import json,sys; print(' '.join(map(str, json.load(open(sys.argv[1]))['prompt_token_ids'])))" "$work/check.json")
    "$work/peer_greedy" "$gguf" 1 "$check" $ids > "$work/theirs.txt" 2> "$work/greedy.log"
    "$py" scripts/peer_llamacpp.py agree "$work/check.json" "$work/theirs.txt" "$shape" llama.cpp

    # run.c, where it can hold the model: the same greedy check.
    runc_bin="$work/models/$shape.llama2c.bin"
    if [ -f "$runc_bin" ] || { "$py" scripts/peer_llamacpp.py llama2c "$dir" "$runc_bin.part" 2> "$work/llama2c/convert.log" && mv "$runc_bin.part" "$runc_bin"; }; then
        n_ids=$(echo $ids | wc -w)
        seq_len=$("$py" -c "import json, sys; print(json.load(open(sys.argv[1])).get('max_position_embeddings', 2048))" "$dir/config.json")
        if [ $((n_ids + tokens)) -gt "$seq_len" ] || [ $((n_ids + check)) -gt "$seq_len" ]; then
            echo "$shape: run.c left out: $n_ids prompt ids + $tokens tokens exceed its $seq_len positions"
            runc_bin=
        else
            "$work/peer_runc" "$runc_bin" "$check" $ids > "$work/theirs.txt" 2> "$work/llama2c/run.log" \
                || { cat "$work/llama2c/run.log" >&2; echo "peer-llamacpp: run.c failed on $shape" >&2; exit 1; }
            "$py" scripts/peer_llamacpp.py agree "$work/check.json" "$work/theirs.txt" "$shape" run.c
        fi
    else
        echo "$shape: run.c cannot hold this model: $(tail -1 "$work/llama2c/convert.log")"
        runc_bin=
    fi

    for t in ${threads_list//,/ }; do
        [ "$t" = all ] && t=$all
        for r in $(seq "$runs"); do
            # Alternated: exitbench, then llama.cpp, in every run.
            "$exe" generate --model "$dir" --prompt "$prompt" --max-new-tokens "$tokens" --ignore-eos --threads "$t" --json > "$work/run.json"
            "$py" - "$work/run.json" "$shape" "$t" >> "$results" <<'EOF'
import json, sys
g = json.load(open(sys.argv[1]))
decode_ms = sum(x["layers_ms"] + x["exit_checks_ms"] + x["propagation_ms"] for x in g["tokens"][1:])
print(json.dumps({"who": "exitbench", "model": sys.argv[2], "threads": int(sys.argv[3]), "tok_s": (len(g["tokens"]) - 1) / (decode_ms / 1e3)}))
EOF
            if [ -n "$runc_bin" ] && [ "$t" = 1 ]; then
                "$work/peer_runc" "$runc_bin" "$tokens" $ids > /dev/null 2> "$work/llama2c/run.log" \
                    || { cat "$work/llama2c/run.log" >&2; echo "peer-llamacpp: run.c failed on $shape" >&2; exit 1; }
                "$py" -c "import json, sys; r = json.load(open(sys.argv[2])); print(json.dumps({'who': 'run.c', 'model': sys.argv[1], 'threads': 1, 'tok_s': r['tok_s']}))" "$shape" "$work/llama2c/run.log" >> "$results"
            fi
            "$work/build/bin/llama-bench" -m "$gguf" -p 0 -n "$tokens" -t "$t" -r 1 -o json 2> /dev/null > "$work/bench.json"
            "$py" - "$work/bench.json" "$shape" "$t" >> "$results" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))[0]
print(json.dumps({"who": "llama.cpp", "model": sys.argv[2], "threads": int(sys.argv[3]), "tok_s": b["avg_ts"]}))
EOF
        done
    done
done
echo
echo "Decode tokens/s, $runs alternated runs of $tokens tokens each ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $all cores), not pinned:"
"$py" scripts/peer_llamacpp.py summary "$results"
