#!/usr/bin/env python3
"""Helpers of scripts/peer-llamacpp.sh (a peer comparison with llama.cpp, not part of CI).

  shape NAME DIR        writes a random-weight Hugging Face Llama directory of a named shape
                        (15m: stories15M's; 1b: Llama-3.2-1B's): config.json, model.safetensors
                        (normal(0, 0.02) weights, unit norms, seed 0) and a tokenizer.json (the
                        embedded model's, its vocabulary padded with unused entries to the shape's)
  gguf DIR OUT.gguf     converts a Hugging Face Llama directory (f32 safetensors) to an f32 GGUF
                        with llama.cpp's vendored gguf-py: q/k rows permuted to llama.cpp's rotary
                        layout as its own converter does, a placeholder vocabulary of the model's
                        size (token ids are fed directly, never text)
  llama2c DIR OUT.bin    converts a Hugging Face Llama directory (f32 safetensors) to llama2.c's
                        checkpoint (run.c's legacy format: a 7-int header, then the weights in
                        its order), q/k rows permuted to its interleaved rotary pairs; run.c
                        hard-codes RoPE base 10000 and RMSNorm eps 1e-5, so other configs are refused
  agree OURS.json THEIRS.txt SHAPE PEER
                        prints whether exitbench's greedy ids (generate --json) and a peer's
                        (whitespace-separated) agree, and where they part
  summary RESULTS.jsonl prints the medians, spreads and ratios of the alternated runs
"""
import json
import os
import statistics
import struct
import sys

import numpy as np

SHAPES = {
    # stories15M (llama2.c): dim 288, 6 layers, 6 heads, hidden 768, vocab 32000.
    "15m": dict(hidden_size=288, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6, vocab_size=32000, max_position_embeddings=256, tie_word_embeddings=True),
    # Llama-3.2-1B: dim 2048, 16 layers, 32/8 heads, hidden 8192, vocab 128256, tied.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0),
}


def read_safetensors(path):
    """name -> float32 array (memory-mapped)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {t['dtype']}; this converter takes f32 weights")
        a, b = t["data_offsets"]
        out[name] = data[a:b].view(np.float32).reshape(t["shape"])
    return out


def write_safetensors(path, tensors):
    """Writes (name, shape, fill) entries one tensor at a time (fill(shape) -> float32 array)."""
    header, offset = {}, 0
    for name, shape, _ in tensors:
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, fill in tensors:
            f.write(np.ascontiguousarray(fill(shape), dtype=np.float32).tobytes())


def shape(name, out_dir):
    cfg = dict(rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"])
    cfg.update(SHAPES[name])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    rng = np.random.default_rng(0)
    normal = lambda s: (rng.standard_normal(s, dtype=np.float32) * 0.02)
    ones = lambda s: np.ones(s, dtype=np.float32)
    d, f_, h, kv, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    hd = d // h
    t = [("model.embed_tokens.weight", (v, d), normal)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", (d,), ones), (p + "self_attn.q_proj.weight", (h * hd, d), normal),
              (p + "self_attn.k_proj.weight", (kv * hd, d), normal), (p + "self_attn.v_proj.weight", (kv * hd, d), normal),
              (p + "self_attn.o_proj.weight", (d, h * hd), normal), (p + "post_attention_layernorm.weight", (d,), ones),
              (p + "mlp.gate_proj.weight", (f_, d), normal), (p + "mlp.up_proj.weight", (f_, d), normal), (p + "mlp.down_proj.weight", (d, f_), normal)]
    t.append(("model.norm.weight", (d,), ones))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), t)
    # The embedded model's tokenizer, its vocabulary padded to the shape's size with entries no
    # text produces (prompts encode exactly as with the embedded model).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "models", "cricket-6l", "tokenizer.json")) as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    for i in range(len(vocab), v):
        vocab[f"<unused{i}>"] = i
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


def permute(w, n_head):
    """llama.cpp's rotary layout from Hugging Face's (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf(model_dir, out):
    import gguf as g  # llama.cpp's vendored gguf-py (PYTHONPATH set by the shell script)

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or h
    v = cfg["vocab_size"]
    writer = g.GGUFWriter(out, "llama")
    writer.add_context_length(cfg.get("max_position_embeddings", 2048))
    writer.add_embedding_length(d)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(h)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(d // h)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(v)
    writer.add_file_type(0)  # all f32
    # A placeholder SentencePiece vocabulary of the right size: unknown, BOS, EOS, the 256 byte
    # tokens llama.cpp's loader looks up, then unused pieces.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    tokens += [f"\u2581t{i}" for i in range(len(tokens), v)]
    types += [1] * (v - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens[:v])
    writer.add_token_scores([0.0] * v)
    writer.add_token_types(types[:v])
    writer.add_bos_token_id(cfg.get("bos_token_id", 1))
    writer.add_eos_token_id(cfg.get("eos_token_id", 2) if isinstance(cfg.get("eos_token_id", 2), int) else cfg["eos_token_id"][0])
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", np.asarray(w["model.embed_tokens.weight"]))
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"model.layers.{i}.", f"blk.{i}."
        writer.add_tensor(q + "attn_norm.weight", np.asarray(w[p + "input_layernorm.weight"]))
        writer.add_tensor(q + "attn_q.weight", permute(np.asarray(w[p + "self_attn.q_proj.weight"]), h))
        writer.add_tensor(q + "attn_k.weight", permute(np.asarray(w[p + "self_attn.k_proj.weight"]), kv))
        writer.add_tensor(q + "attn_v.weight", np.asarray(w[p + "self_attn.v_proj.weight"]))
        writer.add_tensor(q + "attn_output.weight", np.asarray(w[p + "self_attn.o_proj.weight"]))
        writer.add_tensor(q + "ffn_norm.weight", np.asarray(w[p + "post_attention_layernorm.weight"]))
        writer.add_tensor(q + "ffn_gate.weight", np.asarray(w[p + "mlp.gate_proj.weight"]))
        writer.add_tensor(q + "ffn_up.weight", np.asarray(w[p + "mlp.up_proj.weight"]))
        writer.add_tensor(q + "ffn_down.weight", np.asarray(w[p + "mlp.down_proj.weight"]))
    writer.add_tensor("output_norm.weight", np.asarray(w["model.norm.weight"]))
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    writer.add_tensor("output.weight", np.asarray(head))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama2c(model_dir, out):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if float(cfg.get("rope_theta", 10000.0)) != 10000.0 or cfg.get("rope_scaling") or float(cfg.get("rms_norm_eps", 1e-5)) != 1e-5:
        raise SystemExit(f"{model_dir}: run.c hard-codes RoPE base 10000, no scaling and RMSNorm eps 1e-5; this config differs")
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    d, f_, n, h, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads") or h
    seq = cfg.get("max_position_embeddings", 2048)
    shared = "lm_head.weight" not in w
    layer = lambda name: [np.asarray(w[f"model.layers.{i}.{name}"]) for i in range(n)]
    with open(out, "wb") as o:
        o.write(struct.pack("<7i", d, f_, n, h, kv, v if shared else -v, seq))
        put = lambda a: o.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        put(w["model.embed_tokens.weight"])
        for a in layer("input_layernorm.weight"):
            put(a)
        for a in layer("self_attn.q_proj.weight"):
            put(permute(a, h))
        for a in layer("self_attn.k_proj.weight"):
            put(permute(a, kv))
        for name in ["self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"]:
            for a in layer(name):
                put(a)
        put(w["model.norm.weight"])
        put(np.zeros(seq * (d // h), dtype=np.float32))  # the unused freq_cis_real and _imag
        if not shared:
            put(w["lm_head.weight"])


def agree(ours_json, theirs_txt, shape, peer):
    ours = json.load(open(ours_json))["token_ids"]
    theirs = [int(x) for x in open(theirs_txt).read().split()]
    n = len(ours)
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), n if len(theirs) >= n else len(theirs))
    tail = "" if same == n else f"; then exitbench {ours[same:same + 4]}, {peer} {theirs[same:same + 4]}"
    print(f"{shape}: greedy tokens agree with {peer}, {same} of {n}{tail}")


def summary(path):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    keys = sorted({(r["model"], r["threads"]) for r in runs})
    cell = lambda v: f"{statistics.median(v):,.1f} ({min(v):,.1f}–{max(v):,.1f})" if v else "–"
    ratio = lambda a, b: f"{statistics.median(a) / statistics.median(b):.2f}" if a and b else "–"
    print("| model | threads | exitbench candle tok/s (median, min–max) | llama.cpp tok/s | run.c -Ofast tok/s | exitbench ÷ llama.cpp | exitbench ÷ run.c | exitbench spread (max ÷ min) | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, threads in keys:
        of = lambda who: [r["tok_s"] for r in runs if r["model"] == model and r["threads"] == threads and r["who"] == who]
        e, l, c = of("exitbench"), of("llama.cpp"), of("run.c")
        if not e:
            continue
        print(f"| {model} | {threads} | {cell(e)} | {cell(l)} | {cell(c)} | {ratio(e, l)} | {ratio(e, c)} | {max(e) / min(e):.2f} | {len(e)} |")
    print("(run.c: one thread only, built without OpenMP; – where it cannot hold the model or did not run)")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "shape" and len(sys.argv) == 4:
        shape(sys.argv[2], sys.argv[3])
    elif cmd == "gguf" and len(sys.argv) == 4:
        gguf(sys.argv[2], sys.argv[3])
    elif cmd == "llama2c" and len(sys.argv) == 4:
        llama2c(sys.argv[2], sys.argv[3])
    elif cmd == "agree" and len(sys.argv) == 6:
        agree(*sys.argv[2:6])
    elif cmd == "summary" and len(sys.argv) == 3:
        summary(sys.argv[2])
    else:
        raise SystemExit(__doc__)
