#!/usr/bin/env python3
"""A reference that exitbench's authors did not write: the machine's PyTorch + Hugging Face
transformers (`LlamaForCausalLM.from_pretrained` on the model directory), greedy with a KV
cache, against exitbench's candle results on the same prompts.

For each --case MODEL:DTYPE[:strict[:RESULTS.jsonl]]:
  * loads the model with transformers in DTYPE (f32 runs with TF32 off for matmuls and cuDNN),
    reporting missing / unexpected / mismatched weight names (a layout transformers reads
    differently from exitbench would show up here);
  * encodes the first --n prompts of --dataset with the model's tokenizer.json (the same ids
    exitbench feeds: checked against Hugging Face `tokenizers` when importable and against the
    prompt length `exitbench generate` reports, see reference_numpy.py);
  * warms up, then greedy-decodes each prompt (stop rules as exitbench's), timing the decode
    tokens (every token after the first) between torch.cuda.synchronize() calls;
  * compares the ids with exitbench's: for a strict case with `exitbench generate --json` runs on
    --device (full depth, candle) and with the sweep's full-depth cell when --results has one;
    otherwise with the sweep's cell only (reported, never failing). Equal, except from the first
    differing position when torch's own top-2 logit gap there is below --tie-gap (1e-4);
  * puts torch's decode ms/token beside exitbench's: the sweep's full-depth ms_per_token.median,
    and its full-unsplit cell's where there is one (on CUDA exitbench also times full depth
    without the per-layer time split and its synchronizations, the fairer figure beside torch).
For a case spec MODEL:DTYPE:strict:RESULTS, RESULTS is the sweep's results.jsonl (optional).
Exit 1 when a strict case disagrees without a near-tie, the tokenizer or a weight name does not
match, or a case fails to run. Also runs on --device cpu (used to rehearse it without a GPU).

Usage (on the GPU machine, system python3 with torch + transformers):
  python3 scripts/reference_torch.py --bin EXITBENCH --dataset PROMPTS.jsonl --n 5 \
      --max-new-tokens 32 --device cuda:0 --out torch.json \
      --case models/cricket-6l:f32:strict:RESULTS_DIR/results.jsonl \
      --case /tmp/llama1b:bf16::RESULTS_1B/results.jsonl
"""
import argparse
import json
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_numpy as ref  # noqa: E402  (tokenizer, comparison, exitbench helpers)

import torch  # noqa: E402

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def load_model(model_dir, dtype, device):
    """transformers' own loading; if it refuses the directory, the config and weights by hand
    (and the reason is reported: the directory is then not quite what transformers expects)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    how = "LlamaForCausalLM.from_pretrained"
    try:
        try:
            model, info = LlamaForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], output_loading_info=True)
        except TypeError:  # transformers 4.x spells it torch_dtype
            model, info = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=DTYPES[dtype], output_loading_info=True)
        info = {k: sorted(map(str, v)) for k, v in info.items() if isinstance(v, (list, set, tuple))}
    except Exception as exc:
        how = f"by hand (from_pretrained failed: {type(exc).__name__}: {str(exc)[:300]})"
        cfg = {k: v for k, v in json.load(open(os.path.join(model_dir, "config.json"))).items() if v is not None}
        model = LlamaForCausalLM(LlamaConfig(**cfg))
        state = {k: torch.from_numpy(v.copy()) for k, v in ref.load_weights(model_dir).items()
                 if not k.startswith("exit_classifier.")}
        res = model.load_state_dict(state, strict=False)
        for prm in model.parameters():  # parameters only: RoPE's inv_freq buffer stays f32, as from_pretrained keeps it
            prm.data = prm.data.to(DTYPES[dtype])
        info = {"missing_keys": sorted(res.missing_keys), "unexpected_keys": sorted(res.unexpected_keys)}
        if model.config.tie_word_embeddings:
            model.tie_weights()
            info["missing_keys"] = [k for k in info["missing_keys"] if k != "lm_head.weight"]
    model = model.to(device).eval()
    return model, info, how


def forward_fn(model):
    """One decoder call with the KV cache, whatever this transformers calls the cache argument
    (`past_key_values` up to 5.2x, `cache` since) and whether it takes `logits_to_keep`."""
    import inspect
    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    keep = "logits_to_keep" in params

    def call(input_ids, cache=None, last_only=False):
        kw = {"input_ids": input_ids, "use_cache": True}
        if cache is not None:
            kw[name] = cache
        if keep and last_only:
            kw["logits_to_keep"] = 1
        out = model(**kw)
        new = getattr(out, "cache", None)
        return out.logits, new if new is not None else getattr(out, "past_key_values", None)

    return call


@torch.inference_mode()
def greedy(model, prompt, max_new_tokens, eos_ids, max_positions, device):
    call = forward_fn(model)
    sync(device)
    t0 = time.perf_counter()
    logits, cache = call(torch.tensor([prompt], device=device), last_only=True)
    toks, gaps = [], []

    def take(logits):
        top = torch.topk(logits.float(), 2)
        v, i = top.values.tolist(), top.indices.tolist()  # a host sync per token, as exitbench's
        toks.append(int(i[0]))
        gaps.append(float(v[0] - v[1]))

    take(logits[0, -1])
    sync(device)
    prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    while not (toks[-1] in eos_ids or len(toks) >= max_new_tokens or len(prompt) + len(toks) >= max_positions):
        logits, cache = call(torch.tensor([[toks[-1]]], device=device), cache)
        take(logits[0, -1])
    sync(device)
    return {"ids": toks, "gaps": gaps, "prefill_s": prefill_s, "decode_s": time.perf_counter() - t1}


def run_case(a, model_dir, dtype, strict, results, examples):
    cfg = ref.load_config(model_dir)
    tok_path = os.path.join(model_dir, "tokenizer.json")
    tok = ref.Tokenizer(tok_path)
    prompts = [tok.encode(e["prompt"]) for e in examples]
    hf_tok = ref.check_tokenizer_with_hf(tok_path, [e["prompt"] for e in examples], prompts)
    t0 = time.perf_counter()
    model, load_info, how = load_model(model_dir, dtype, a.device)
    load_s = time.perf_counter() - t0
    greedy(model, prompts[0], min(8, a.max_new_tokens), cfg["eos_ids"], cfg["max_position_embeddings"], a.device)  # warm-up
    cell = ref.sweep_cell(results, model_dir, "candle", a.device, dtype)
    sweep_ids = {o["id"]: o.get("token_ids", []) for o in cell["outputs"]} if cell else {}
    unsplit = ref.sweep_cell(results, model_dir, "candle", a.device, dtype, baseline="full-unsplit")
    rows, ok = [], not (load_info.get("missing_keys") or load_info.get("mismatched_keys")) and hf_tok is not False
    for e, p in zip(examples, prompts):
        g = greedy(model, p, a.max_new_tokens, cfg["eos_ids"], cfg["max_position_embeddings"], a.device)
        row = {"id": e["id"], "prompt_tokens": len(p), "ref_ids": g["ids"], "ref_gaps": g["gaps"],
               "decoded": len(g["ids"]) - 1, "decode_s": g["decode_s"], "prefill_s": g["prefill_s"]}
        if strict:
            eb = ref.exitbench_generate(a.bin, model_dir, e["prompt"], a.max_new_tokens, device=a.device, dtype=dtype)
            row["exitbench_prompt_tokens"] = eb["prompt_tokens"]
            row["exitbench_ids"] = eb["token_ids"]
            ok = ref.check_exitbench_run(row, eb, len(p), sweep_ids.get(e["id"])) and ok
        elif e["id"] in sweep_ids:
            row["exitbench_ids"] = sweep_ids[e["id"]]
            n = len(row["exitbench_ids"])
            row["ref_ids_cmp"] = g["ids"][:n]
        if "exitbench_ids" in row:
            mine = row.get("ref_ids_cmp", g["ids"])
            row["cmp"] = ref.compare(mine, g["gaps"], row["exitbench_ids"], a.tie_gap)
            if strict:
                ok = ok and row["cmp"]["explained"]
        rows.append(row)
    decoded = sum(r["decoded"] for r in rows)
    torch_ms = 1e3 * sum(r["decode_s"] for r in rows) / max(1, decoded)
    per_prompt = [1e3 * r["decode_s"] / r["decoded"] for r in rows if r["decoded"]]
    compared = [r for r in rows if "cmp" in r]
    res = {"model": model_dir, "dtype": dtype, "strict": strict, "load_s": load_s, "loaded": how, "loading_info": load_info,
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "tokenizer_matches_hf_tokenizers": hf_tok,
           "exitbench_ids_from": ("exitbench generate --device " + a.device) if strict else ("sweep cell" if cell else None),
           "summary": ref.summarize(compared) if compared else None,
           "torch_decode_ms_per_token": torch_ms,
           "torch_decode_ms_per_token_median_over_prompts": statistics.median(per_prompt) if per_prompt else None,
           "exitbench_decode_ms_per_token_median": cell["ms_per_token"]["median"] if cell else None,
           # the same full depth timed without the layers / checks / propagation split (no per-layer syncs)
           "exitbench_unsplit_decode_ms_per_token_median": unsplit["ms_per_token"]["median"] if unsplit else None,
           "pass": ok, "rows": rows}
    eb_ms = res["exitbench_decode_ms_per_token_median"]
    s = res["summary"]
    agree = (f"{s['identical']}/{s['prompts']} prompts identical, {s['explained_by_near_tie']} near-tie, "
             f"{s['unexplained']} unexplained, {s['positions_equal']}/{s['positions']} positions equal") if s else "no exitbench ids"
    print(f"  torch {dtype} {model_dir}: {agree}; decode ms/token torch {torch_ms:.3f}, exitbench "
          + (f"{eb_ms:.3f} (torch / exitbench = {torch_ms / eb_ms:.2f})" if eb_ms else "n/a (no sweep cell)")
          + (f", exitbench without the time split {res['exitbench_unsplit_decode_ms_per_token_median']:.3f}"
             if unsplit else "")
          + ("" if ok else "  -> FAIL"))
    for r in rows:
        c = r.get("cmp")
        if c and not c["equal"]:
            print(f"    {r['id']}: first difference at position {c['first_diff']}, torch top-2 gap {c['gap_at_diff']}"
                  f" -> {'near-tie' if c['explained'] else 'NOT a near-tie'}")
        if "error" in r:
            print(f"    {r['id']}: {r['error']}")
    print(f"    loaded {how}; missing {load_info.get('missing_keys')}, unexpected {load_info.get('unexpected_keys')}, "
          f"mismatched {load_info.get('mismatched_keys', [])}; attention {res['attn_implementation']}; "
          f"tokenizer vs HF tokenizers: {hf_tok}")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tie-gap", type=float, default=ref.TIE_GAP)
    ap.add_argument("--case", action="append", required=True, help="MODEL:DTYPE[:strict][:RESULTS.jsonl]")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    examples = ref.read_prompts(a.dataset, a.n)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "allow_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except Exception:
        pass
    print(f"  torch {env['torch']} (CUDA {env['cuda']}) on {env['gpu']}, transformers {env.get('transformers')}, TF32 off")
    cases, ok = [], True
    for spec in a.case:
        parts = spec.split(":")
        model_dir, dtype = parts[0], parts[1]
        strict = len(parts) > 2 and parts[2] == "strict"
        results = parts[3] if len(parts) > 3 and parts[3] else None
        try:
            res = run_case(a, model_dir, dtype, strict, results, examples)
        except Exception as exc:  # one case failing must not hide the others
            traceback.print_exc()
            res = {"model": model_dir, "dtype": dtype, "pass": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"  torch {dtype} {model_dir}: ERROR {res['error']}")
        ok = ok and res["pass"]
        cases.append(res)
        json.dump({"reference": "torch+transformers", "env": env, "tie_gap": a.tie_gap, "cases": cases, "pass": ok},
                  open(a.out, "w"), indent=1)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
