"""Steering overhead on a GPU, with no downloaded weights: random-initialised models of LLaVA-1.5-7B's
language-model size and of Llama-3-8B's, in bf16, built from configs.

    python -m benchmarks.gpu                       # on one GPU: both sizes, batch 1, 16, 64, 128 new tokens
    python -m benchmarks.gpu --tiny                # CPU dry run of the same code on a tiny config (tests)

For each model and batch size: unsteered HF generate, then steered generate with Mean-S (one shared
vector), per-row vectors (a distinct vector per row) and L2S (a random g computed inside the pass),
each through the nnsight and the hooks backends. Prints steered / unsteered ratios (medians of
per-repeat ratios; targets at batch 16: <= 1.03 hooks, <= 1.05 nnsight) and absolute tokens per
second, and writes JSON. The prompts use the tiny test tokenizer (random weights need no real
vocabulary); the token ids stay inside every model's vocabulary. No assertion.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import PROMPTS, _ratios, timeit

CONFIGS: dict[str, dict[str, Any]] = {
    # LLaVA-1.5-7B's language model (Vicuna-7B / Llama-2-7B shape)
    "llava-1.5-7b-lm": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096),
    # Llama-3-8B
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    # CPU dry run
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512),
}


def build(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerlib import SteerableModel
    from steerlib.testing import build_tiny

    cfg = LlamaConfig(**CONFIGS[name], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    tiny = build_tiny("llama")  # its tokenizer and chat template (ids < 1024 < every vocabulary here)
    tiny.tokenizer.padding_side = "left"
    return SteerableModel(model, tiny.processor)


def bench(sm: Any, batches: list[int], new_tokens: int, repeats: int, layer: int) -> list[dict[str, Any]]:
    from steerlib import Intervention, SteerableModel
    from steerlib.steerers import SteeringNet

    hooked = SteerableModel(sm.model, sm.processor, adapter=sm.adapter, validate=False, backend="hooks")
    d = sm.hidden_size
    dev, dt = sm.device, sm.dtype
    g = torch.Generator().manual_seed(0)
    net = SteeringNet(d, 100).to(dev).eval().requires_grad_(False)

    def predict(h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(h.float()).to(h.dtype)

    rows = []
    for batch in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        b = sm.encode(prompts)
        v = torch.randn(d, generator=g)
        ivs = {"mean": Intervention.build(layer, v / v.norm(), alpha=0.5),
               "per_row": Intervention.build(layer, torch.randn(batch, d, generator=g) / d ** 0.5, alpha=0.5),
               "l2s": Intervention.build(layer, predictor=predict, source_layer=layer, alpha=0.5)}
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        pad = sm.tokenizer.pad_token_id

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def hf(b: Any = b) -> None:
            with torch.no_grad():
                sm.model.generate(**{k: x.to(dev) for k, x in b.inputs.items()}, **kw, do_sample=False,
                                  pad_token_id=pad)
            sync()

        fns: dict[str, Any] = {"hf": hf}
        for backend, m in (("nnsight", sm), ("hooks", hooked)):
            for name, iv in ivs.items():
                def run(m: Any = m, iv: Any = iv, b: Any = b) -> None:
                    m.generate(b, iv, **kw)
                    sync()

                fns[f"{name}_{backend}"] = run
        t = timeit(fns, repeats)
        for key in fns:
            if key == "hf":
                continue
            r = _ratios(t, key, "hf")
            name, backend = key.rsplit("_", 1)
            rows.append({"batch": batch, "method": name, "backend": backend, "ratio": statistics.median(r),
                         "range": [r[0], r[-1]], "tokens_per_s": batch * new_tokens / statistics.median(t[key]),
                         "unsteered_tokens_per_s": batch * new_tokens / statistics.median(t["hf"])})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU dry run on a tiny config")
    p.add_argument("--models", default="llava-1.5-7b-lm,llama-3-8b")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--out", default="benchmarks/gpu.json")
    a = p.parse_args(argv)
    if a.tiny:
        models, device, dtype = ["tiny"], torch.device("cpu"), torch.float32
        batches, new_tokens, repeats = [1, 2], min(a.new_tokens, 8), 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --tiny for the CPU dry run")
        models, device, dtype = a.models.split(","), torch.device("cuda"), torch.bfloat16
        batches, new_tokens, repeats = [int(x) for x in a.batches.split(",")], a.new_tokens, a.repeats
    t0 = time.perf_counter()
    out = {}
    for name in models:
        sm = build(name, device, dtype)
        layer = min(a.layer, sm.num_layers - 1)
        rows = bench(sm, batches, new_tokens, repeats, layer)
        out[name] = rows
        dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        print(f"\n{name} ({sm.num_layers} layers, d = {sm.hidden_size}, {dtype}, {dev_name}), {new_tokens} new tokens, "
              f"layer {layer}, {repeats} repeats\n")
        print("| batch | method | backend | steered / unsteered (median, range) | steered tokens/s | unsteered tokens/s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {r['method']} | {r['backend']} | {r['ratio']:.3f} [{r['range'][0]:.3f}, "
                  f"{r['range'][1]:.3f}] | {r['tokens_per_s']:.0f} | {r['unsteered_tokens_per_s']:.0f} |")
        del sm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    Path(a.out).write_text(json.dumps({"settings": vars(a), "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
