#!/usr/bin/env python3
"""An independent float64 NumPy reference for exitbench's full-depth greedy decoding.

A Llama-family decoder written from the Hugging Face `LlamaForCausalLM` definition, not from
exitbench's code: RMSNorm, RoPE (non-interleaved half rotation, with Llama 3 `rope_scaling`
when the config has one), grouped-query attention with a KV cache, SwiGLU, optional Qwen2-style
q/k/v biases, tied embeddings when `tie_word_embeddings` and no `lm_head.weight`. Greedy, stops
like exitbench: after an EOS (kept), at --max-new-tokens, or when the sequence fills
max_position_embeddings.

Everything else it needs is here too, so that it runs with numpy alone (the repository's .venv):
  * a safetensors reader (8-byte little-endian header length, JSON header, raw data; F32, F16,
    BF16, F64; sharded `model.safetensors.index.json` too);
  * a byte-level BPE tokenizer reading `tokenizer.json` the way Hugging Face `tokenizers` does
    for the files exitbench uses (Digits + ByteLevel pre-tokenizers, BPE merges by rank,
    TemplateProcessing for the BOS), cross-checked at run time against the prompt length
    exitbench reports (and against `tokenizers` itself where that package is importable);
  * `exitbench generate --json` runs for the same prompts, and the comparison rule.

Comparison rule: the token ids must be equal, except from the first position where they differ
when the reference's own top-2 logit gap there is below --tie-gap (1e-4): a near-tie that any
rounding may flip. Such a position is reported; an unexplained difference fails (exit 1).

Usage (from the repository root):
  .venv/bin/python scripts/reference_numpy.py --bin target/release/exitbench \
      --model models/cricket-6l --dataset PROMPTS.jsonl --n 5 --max-new-tokens 32 --out ref.json
  (PROMPTS.jsonl: `exitbench data synth --split test --n 5 --out PROMPTS.jsonl`)
It compares with `exitbench generate --backend candle --device cpu --dtype f32` (full depth);
--exitbench-results RESULTS.jsonl adds a check against a sweep's full-depth cell (same prefix of
ids) and its ms/token. scripts/reference_torch.py imports the helpers from this file.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import time
import unicodedata

import numpy as np

TIE_GAP = 1e-4

# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path, names=None):
    """{name: np.ndarray} of one safetensors file (BF16 widened to float32), optionally only
    `names`."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__" or (names is not None and name not in names):
                continue
            lo, hi = meta["data_offsets"]
            f.seek(base + lo)
            raw = f.read(hi - lo)
            dt, shape = meta["dtype"], meta["shape"]
            if dt == "BF16":
                a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dt in _ST_DTYPES:
                a = np.frombuffer(raw, dtype=np.dtype(_ST_DTYPES[dt]).newbyteorder("<"))
            else:
                raise ValueError(f"{path}: tensor {name} has dtype {dt}, which this reader does not handle")
            out[name] = a.reshape(shape)
    return out


def safetensors_dtypes(model_dir):
    """The set of dtypes stored in the model's weight files."""
    seen = set()
    for p in weight_files(model_dir):
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            h = json.loads(f.read(n))
        seen |= {m["dtype"] for k, m in h.items() if k != "__metadata__"}
    return seen


def weight_files(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        shards = sorted(set(json.load(open(idx))["weight_map"].values()))
        return [os.path.join(model_dir, s) for s in shards]
    return [os.path.join(model_dir, "model.safetensors")]


def load_weights(model_dir):
    w = {}
    for p in weight_files(model_dir):
        w.update(read_safetensors(p))
    return w


# ---------------------------------------------------------------------------------------------
# tokenizer.json (byte-level BPE)
# ---------------------------------------------------------------------------------------------

def _bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


try:
    import regex as _re  # the `regex` package (in .venv via nltk; a transformers dependency)
    _GPT2_SPLIT = _re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
except ImportError:  # close enough for ASCII text
    import re as _re
    _GPT2_SPLIT = _re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


class Tokenizer:
    """Encodes text as Hugging Face `tokenizers` does for byte-level BPE tokenizer.json files
    (no normalizer; Digits, ByteLevel and Sequence pre-tokenizers; BPE without dropout;
    TemplateProcessing or no post-processor)."""

    def __init__(self, path):
        t = json.load(open(path, encoding="utf-8"))
        m = t["model"]
        if m.get("type") != "BPE" or m.get("dropout") or m.get("continuing_subword_prefix") or m.get("end_of_word_suffix"):
            raise ValueError(f"{path}: only plain byte-level BPE is handled here")
        if t.get("normalizer"):
            raise ValueError(f"{path}: a normalizer ({t['normalizer'].get('type')}) is not handled here")
        self.vocab = m["vocab"]
        merges = m.get("merges") or []
        self.ranks = {}
        for r, mg in enumerate(merges):
            a, b = mg if isinstance(mg, list) else mg.split(" ", 1)
            self.ranks[(a, b)] = r
        self.ignore_merges = bool(m.get("ignore_merges"))
        self.pre = t.get("pre_tokenizer")
        self.post = t.get("post_processor")
        self.added = sorted((a["content"] for a in t.get("added_tokens", [])), key=len, reverse=True)
        self.added_ids = {a["content"]: a["id"] for a in t.get("added_tokens", [])}
        self.b2u = _bytes_to_unicode()
        self.path = path

    # pre-tokenizers: each takes a list of strings and returns a list of strings
    def _pre(self, spec, pieces):
        if spec is None:
            return pieces
        ty = spec["type"]
        if ty == "Sequence":
            for s in spec["pretokenizers"]:
                pieces = self._pre(s, pieces)
            return pieces
        if ty == "Digits":
            out = []
            for p in pieces:
                cur = ""
                for ch in p:
                    if unicodedata.category(ch) in ("Nd", "Nl", "No"):
                        if spec.get("individual_digits"):
                            if cur:
                                out.append(cur)
                            out.append(ch)
                            cur = ""
                        else:
                            if cur and not _is_num(cur[-1]):
                                out.append(cur)
                                cur = ""
                            cur += ch
                    else:
                        if cur and _is_num(cur[-1]) and not spec.get("individual_digits"):
                            out.append(cur)
                            cur = ""
                        cur += ch
                if cur:
                    out.append(cur)
            return out
        if ty == "ByteLevel":
            out = []
            for i, p in enumerate(pieces):
                if spec.get("add_prefix_space") and i == 0 and not p.startswith(" "):
                    p = " " + p
                parts = _GPT2_SPLIT.findall(p) if spec.get("use_regex", True) else [p]
                out.extend("".join(self.b2u[b] for b in s.encode("utf-8")) for s in parts)
            return out
        raise ValueError(f"{self.path}: pre-tokenizer {ty} is not handled here")

    def _bpe(self, word):
        if self.ignore_merges and word in self.vocab:
            return [word]
        syms = list(word)
        while len(syms) > 1:
            best = None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            syms[i:i + 2] = [syms[i] + syms[i + 1]]
        return syms

    def encode(self, text):
        # added (special) tokens are matched in the raw text first
        segments = [(text, False)]
        for tok in self.added:
            nxt = []
            for s, special in segments:
                if special:
                    nxt.append((s, True))
                    continue
                parts = s.split(tok)
                for j, part in enumerate(parts):
                    if j:
                        nxt.append((tok, True))
                    if part:
                        nxt.append((part, False))
            segments = nxt
        ids = []
        for s, special in segments:
            if special:
                ids.append(self.added_ids[s])
                continue
            for piece in self._pre(self.pre, [s]):
                for sym in self._bpe(piece):
                    if sym not in self.vocab:
                        raise ValueError(f"{self.path}: symbol {sym!r} is not in the vocabulary")
                    ids.append(self.vocab[sym])
        return self._post(ids)

    def _post(self, ids):
        p = self.post
        if p is None or p.get("type") == "ByteLevel":
            return ids
        if p.get("type") != "TemplateProcessing":
            raise ValueError(f"{self.path}: post-processor {p.get('type')} is not handled here")
        out = []
        for item in p["single"]:
            if "SpecialToken" in item:
                out.extend(p["special_tokens"][item["SpecialToken"]["id"]]["ids"])
            else:
                out.extend(ids)
        return out


def _is_num(ch):
    return unicodedata.category(ch) in ("Nd", "Nl", "No")


def check_tokenizer_with_hf(tok_path, prompts, ours):
    """Agreement with Hugging Face `tokenizers` where it is importable: None when absent."""
    try:
        from tokenizers import Tokenizer as HfTokenizer
    except ImportError:
        return None
    hf = HfTokenizer.from_file(tok_path)
    return all(hf.encode(p).ids == o for p, o in zip(prompts, ours))


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

def load_config(model_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    c["num_key_value_heads"] = c.get("num_key_value_heads") or c["num_attention_heads"]
    c["head_dim"] = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    eos = c.get("eos_token_id")
    c["eos_ids"] = [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])
    return c


def rope_inv_freq(c):
    """Inverse frequencies, head_dim / 2 of them, with Llama 3 scaling (HF's
    `_compute_llama3_parameters`)."""
    hd = c["head_dim"]
    theta = c.get("rope_theta", 10000.0)
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = c.get("rope_scaling")
    if not rs:
        return inv
    ty = rs.get("rope_type", rs.get("type"))
    if ty != "llama3":
        raise ValueError(f"rope_scaling type {ty} is not handled here")
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    orig = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = orig / lo, orig / hi
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (orig / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * inv / factor + smooth * inv
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out)


# ---------------------------------------------------------------------------------------------
# the decoder, float64
# ---------------------------------------------------------------------------------------------

class NumpyLlama:
    def __init__(self, model_dir):
        self.c = c = load_config(model_dir)
        w = load_weights(model_dir)
        f = lambda name: np.ascontiguousarray(w[name], dtype=np.float64)
        g = lambda name: np.ascontiguousarray(w[name], dtype=np.float64) if name in w else None
        self.embed = f("model.embed_tokens.weight")
        self.layers = []
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}"
            self.layers.append({
                "in": f(f"{p}.input_layernorm.weight"), "post": f(f"{p}.post_attention_layernorm.weight"),
                "q": f(f"{p}.self_attn.q_proj.weight").T.copy(), "k": f(f"{p}.self_attn.k_proj.weight").T.copy(),
                "v": f(f"{p}.self_attn.v_proj.weight").T.copy(), "o": f(f"{p}.self_attn.o_proj.weight").T.copy(),
                "qb": g(f"{p}.self_attn.q_proj.bias"), "kb": g(f"{p}.self_attn.k_proj.bias"), "vb": g(f"{p}.self_attn.v_proj.bias"),
                "gate": f(f"{p}.mlp.gate_proj.weight").T.copy(), "up": f(f"{p}.mlp.up_proj.weight").T.copy(),
                "down": f(f"{p}.mlp.down_proj.weight").T.copy(),
            })
        self.norm = f("model.norm.weight")
        if "lm_head.weight" in w:
            self.head = f("lm_head.weight").T.copy()
            self.head_source = "lm_head.weight"
        elif c.get("tie_word_embeddings"):
            self.head = self.embed.T.copy()
            self.head_source = "model.embed_tokens.weight (tied)"
        else:
            raise ValueError(f"{model_dir}: no lm_head.weight and tie_word_embeddings is false")
        self.inv_freq = rope_inv_freq(c)
        self.eps = c.get("rms_norm_eps", 1e-6)

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos0):
        # x: [heads, t, hd]; HF rotate_half: (x1, x2) -> (-x2, x1), halves of the head
        t, hd = x.shape[1], x.shape[2]
        ang = np.arange(pos0, pos0 + t, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def forward(self, ids, pos0, cache):
        """Logits (float64) of the last position of `ids` placed at pos0.. ; appends to cache."""
        c = self.c
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        rep = nh // nkv
        x = self.embed[np.asarray(ids)]
        t = x.shape[0]
        for li, L in enumerate(self.layers):
            h = self.rms(x, L["in"])
            q, k, v = h @ L["q"], h @ L["k"], h @ L["v"]
            if L["qb"] is not None:
                q = q + L["qb"]
            if L["kb"] is not None:
                k = k + L["kb"]
            if L["vb"] is not None:
                v = v + L["vb"]
            q = self.rope(q.reshape(t, nh, hd).transpose(1, 0, 2), pos0)
            k = self.rope(k.reshape(t, nkv, hd).transpose(1, 0, 2), pos0)
            v = v.reshape(t, nkv, hd).transpose(1, 0, 2)
            if li < len(cache):
                K = np.concatenate([cache[li][0], k], axis=1)
                V = np.concatenate([cache[li][1], v], axis=1)
                cache[li] = (K, V)
            else:
                K, V = k, v
                cache.append((K, V))
            T = K.shape[1]
            Kr, Vr = np.repeat(K, rep, axis=0), np.repeat(V, rep, axis=0)  # head h uses kv head h // rep
            s = q @ Kr.transpose(0, 2, 1) / np.sqrt(hd)
            qpos = np.arange(pos0, pos0 + t)[:, None]
            s = np.where(np.arange(T)[None, :] > qpos, -np.inf, s)
            s = s - s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            a = (p @ Vr).transpose(1, 0, 2).reshape(t, nh * hd)
            x = x + a @ L["o"]
            h = self.rms(x, L["post"])
            gt = h @ L["gate"]
            x = x + ((gt / (1 + np.exp(-gt))) * (h @ L["up"])) @ L["down"]
        return self.rms(x[-1], self.norm) @ self.head

    def generate(self, prompt, max_new_tokens):
        """Greedy ids, the top-2 logit gap at each generated position, and timings."""
        cache = []
        t0 = time.perf_counter()
        logits = self.forward(prompt, 0, cache)
        prefill_s = time.perf_counter() - t0
        ids, gaps = [], []
        t1 = time.perf_counter()
        while True:
            top = np.argsort(logits)[::-1][:2]
            ids.append(int(np.argmax(logits)))
            gaps.append(float(logits[top[0]] - logits[top[1]]))
            if ids[-1] in self.c["eos_ids"] or len(ids) >= max_new_tokens \
                    or len(prompt) + len(ids) >= self.c["max_position_embeddings"]:
                break
            logits = self.forward([ids[-1]], len(prompt) + len(ids) - 1, cache)
        decode_s = time.perf_counter() - t1
        return {"ids": ids, "gaps": gaps, "prefill_s": prefill_s, "decode_s": decode_s}


# ---------------------------------------------------------------------------------------------
# exitbench and the comparison
# ---------------------------------------------------------------------------------------------

def read_prompts(path, n):
    rows = []
    for line in open(path, encoding="utf-8"):
        if line.strip():
            rows.append(json.loads(line))
    return rows[:n]


def exitbench_generate(bin_path, model, prompt, max_new_tokens, device="cpu", dtype="f32", backend="candle", env=None):
    """`exitbench generate --json` at full depth: the parsed document."""
    cmd = [bin_path, "generate", "--model", model, "--backend", backend, "--device", device, "--dtype", dtype,
           "--prompt", prompt, "--max-new-tokens", str(max_new_tokens), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:10])} ... exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def compare(ref_ids, ref_gaps, other_ids, tie_gap=TIE_GAP):
    """First difference of two id lists and whether the reference's near-tie explains it."""
    n = min(len(ref_ids), len(other_ids))
    first = next((i for i in range(n) if ref_ids[i] != other_ids[i]), None)
    if first is None and len(ref_ids) != len(other_ids):
        first = n
    if first is None:
        return {"equal": True, "first_diff": None, "gap_at_diff": None, "explained": True,
                "positions_equal": n, "positions": max(len(ref_ids), len(other_ids))}
    gap = ref_gaps[first] if first < len(ref_gaps) else None
    explained = gap is not None and gap < tie_gap
    return {"equal": False, "first_diff": first, "gap_at_diff": gap, "explained": explained,
            "positions_equal": sum(a == b for a, b in zip(ref_ids, other_ids)),
            "positions": max(len(ref_ids), len(other_ids))}


def sweep_cell(results_path, model, backend, device, dtype, baseline="full"):
    """The ok record of a sweep's cell (model matched on its last path component)."""
    if not results_path or not os.path.exists(results_path):
        return None
    want = os.path.basename(os.path.normpath(model))
    for line in open(results_path):
        if not line.strip():
            continue
        r = json.loads(line)
        k = r["key"]
        if (os.path.basename(os.path.normpath(k["model"])) == want and k["backend"] == backend and k["device"] == device
                and k["dtype"] == dtype and k["baseline"] == baseline and r["status"] == "ok"):
            return r
    return None


def check_exitbench_run(row, eb, prompt_len, sweep):
    """Records in `row` whether `exitbench generate` saw the same prompt length and, when the
    sweep has this sample (`sweep`: its token ids), whether they begin generate's; True if both hold."""
    ok = True
    if eb["prompt_tokens"] != prompt_len:
        row["error"] = f"prompt length: ours {prompt_len} tokens, exitbench {eb['prompt_tokens']}"
        ok = False
    if sweep is not None:
        row["sweep_prefix_equal"] = sweep == eb["token_ids"][: len(sweep)]
        ok = ok and row["sweep_prefix_equal"]
    return ok


def summarize(rows):
    """Counts over per-prompt comparisons."""
    return {
        "prompts": len(rows),
        "identical": sum(r["cmp"]["equal"] for r in rows),
        "explained_by_near_tie": sum((not r["cmp"]["equal"]) and r["cmp"]["explained"] for r in rows),
        "unexplained": sum(not r["cmp"]["explained"] for r in rows),
        "positions_equal": sum(r["cmp"]["positions_equal"] for r in rows),
        "positions": sum(r["cmp"]["positions"] for r in rows),
        "min_ref_gap": min((min(r["ref_gaps"]) for r in rows if r["ref_gaps"]), default=None),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="exitbench binary")
    ap.add_argument("--model", default="models/cricket-6l")
    ap.add_argument("--dataset", required=True, help="JSONL with id and prompt (exitbench data synth ...)")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="exitbench's device for the comparison run")
    ap.add_argument("--tie-gap", type=float, default=TIE_GAP)
    ap.add_argument("--exitbench-results", help="a sweep's results.jsonl: check its full-depth candle f32 cell too")
    ap.add_argument("--out", required=True, help="JSON report")
    a = ap.parse_args()

    examples = read_prompts(a.dataset, a.n)
    tok_path = os.path.join(a.model, "tokenizer.json")
    tok = Tokenizer(tok_path)
    prompts = [tok.encode(e["prompt"]) for e in examples]
    t0 = time.perf_counter()
    model = NumpyLlama(a.model)
    load_s = time.perf_counter() - t0
    cell = sweep_cell(a.exitbench_results, a.model, "candle", a.device, "f32")
    sweep_ids = {o["id"]: o.get("token_ids", []) for o in cell["outputs"]} if cell else {}

    rows, ok = [], True
    for e, p in zip(examples, prompts):
        g = model.generate(p, a.max_new_tokens)
        eb = exitbench_generate(a.bin, a.model, e["prompt"], a.max_new_tokens, device=a.device)
        cmp = compare(g["ids"], g["gaps"], eb["token_ids"], a.tie_gap)
        row = {"id": e["id"], "prompt_tokens": len(p), "exitbench_prompt_tokens": eb["prompt_tokens"],
               "ref_ids": g["ids"], "ref_gaps": g["gaps"], "exitbench_ids": eb["token_ids"], "cmp": cmp,
               "ref_decode_ms_per_token": 1e3 * g["decode_s"] / max(1, len(g["ids"]) - 1)}
        ok = check_exitbench_run(row, eb, len(p), sweep_ids.get(e["id"])) and ok
        ok = ok and cmp["explained"]
        rows.append(row)
        status = "identical" if cmp["equal"] else (
            f"differs from position {cmp['first_diff']} (reference top-2 gap {cmp['gap_at_diff']:.3g}: "
            + ("near-tie" if cmp["explained"] else "NOT a near-tie") + ")")
        print(f"  {e['id']}: {len(p)} prompt tokens, {len(g['ids'])} generated, {status}; "
              f"min top-2 gap {min(g['gaps']):.3g}" + (f"; {row['error']}" if "error" in row else ""))
    hf = check_tokenizer_with_hf(tok_path, [e["prompt"] for e in examples], prompts)
    ok = ok and hf is not False
    summary = summarize(rows)
    report = {"reference": "numpy float64", "model": a.model, "head": model.head_source, "load_s": load_s,
              "exitbench": f"candle {a.device} f32 full depth", "tie_gap": a.tie_gap,
              "tokenizer_matches_hf_tokenizers": hf, "summary": summary, "pass": ok,
              "sweep_cell_checked": bool(cell),
              "exitbench_sweep_ms_per_token_median": cell["ms_per_token"]["median"] if cell else None,
              "rows": rows}
    json.dump(report, open(a.out, "w"), indent=1)
    print(f"numpy float64 vs exitbench candle {a.device} f32: {summary['identical']}/{summary['prompts']} prompts identical, "
          f"{summary['explained_by_near_tie']} explained by a near-tie (< {a.tie_gap:g}), {summary['unexplained']} unexplained; "
          f"{summary['positions_equal']}/{summary['positions']} positions equal; smallest reference top-2 gap "
          f"{summary['min_ref_gap']:.3g}; tokenizer vs HF tokenizers: {'n/a (not installed)' if hf is None else hf}"
          + (f"; sweep cell prefix check: {all(r.get('sweep_prefix_equal', True) for r in rows)}" if cell else ""))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
