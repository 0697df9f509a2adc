"""Per-row (input-dependent) vectors at no cost: K distinct vectors in a batch against one shared vector.

    python -m benchmarks.per_row                       # SmolLM2-135M-Instruct, batch 64, K = 1, 8, 64
    python -m benchmarks.per_row --model tiny:llama --batch 8 --ks 1,8 --repeats 1   # smoke run

For each K a ``[batch, d_model]`` vector tensor holding K distinct rows (row i uses vector i mod K) is
added at one layer; the reference is one ``[d_model]`` vector broadcast to every row, and unsteered HF
generate. L2S (g inside the same pass, so every row gets its own vector) is measured against Mean-S
(one shared vector). Throughput ratios (shared time / per-row time; target >= 0.97 at K = 64) are
medians of per-repeat ratios (all cases timed in every repeat, in a fresh random order). Writes JSON
and a plot against K beside EasySteer's published points (vLLM, batch 256: 89 % of unsteered
throughput with one vector, 18 % with 256 distinct per-request vectors). No assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import PROMPTS, _items, _ratios, timeit

#: EasySteer's published throughput relative to unsteered (vLLM, batch 256, full CUDA graphs).
EASYSTEER = {1: 0.89, 256: 0.18}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ks", default="1,8,64")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/per_row.json")
    p.add_argument("--plot", default="docs/img/per_row.png")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from steerlib import Intervention, SteerableModel
    from steerlib.steerers import L2S, MeanSteer
    from steerlib.zoo import load_steerable

    sm = load_steerable(a.model)
    layer = min(a.layer, sm.num_layers - 1)
    hooked = SteerableModel(sm.model, sm.processor, adapter=sm.adapter, validate=False, backend="hooks")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.batch)]
    b = sm.encode(prompts)
    pad = sm.tokenizer.pad_token_id if sm.tokenizer.pad_token_id is not None else sm.tokenizer.eos_token_id
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens)
    g = torch.Generator().manual_seed(0)
    ks = [int(k) for k in a.ks.split(",")]
    base = torch.randn(max(ks), sm.hidden_size, generator=g)
    base = base / base.norm(dim=-1, keepdim=True) * 4.0
    shared = Intervention.build(layer, base[0], alpha=0.5)
    per_row = {k: Intervention.build(layer, base[torch.arange(a.batch) % k], alpha=0.5) for k in ks}
    items = _items(16)
    mean = MeanSteer(layer, alpha=0.5, progress=False).fit(sm, items)
    l2s = L2S(layer, input_layer=layer, alpha=0.5, hidden=64, epochs=2, progress=False).fit(sm, items)

    def hf() -> None:
        with torch.no_grad():
            sm.model.generate(**b.inputs, **kw, do_sample=False, pad_token_id=pad)

    fns: dict[str, Any] = {"hf": hf}
    for backend, m in (("nnsight", sm), ("hooks", hooked)):
        fns[f"shared_{backend}"] = lambda m=m: m.generate(b, shared, **kw)
        for k in ks:
            fns[f"k{k}_{backend}"] = lambda m=m, k=k: m.generate(b, per_row[k], **kw)
        fns[f"mean_{backend}"] = lambda m=m: mean.generate_batch(m, prompts, **kw)
        fns[f"l2s_{backend}"] = lambda m=m: l2s.generate_batch(m, prompts, **kw)
    t = timeit(fns, a.repeats)
    rows = []
    for backend in ("nnsight", "hooks"):
        for k in ks:
            r_shared = _ratios(t, f"shared_{backend}", f"k{k}_{backend}")  # throughput(K) / throughput(shared)
            r_hf = _ratios(t, "hf", f"k{k}_{backend}")
            rows.append({"backend": backend, "vectors": f"K = {k} distinct per-row", "k": k,
                         "vs_shared": statistics.median(r_shared), "vs_shared_range": [r_shared[0], r_shared[-1]],
                         "vs_unsteered": statistics.median(r_hf)})
        r = _ratios(t, f"mean_{backend}", f"l2s_{backend}")
        rows.append({"backend": backend, "vectors": "L2S (g in the pass) vs Mean-S", "k": a.batch,
                     "vs_shared": statistics.median(r), "vs_shared_range": [r[0], r[-1]],
                     "vs_unsteered": statistics.median(_ratios(t, "hf", f"l2s_{backend}"))})
    print(f"\n{a.model}, batch {a.batch}, {a.new_tokens} new tokens, layer {layer}, {a.repeats} repeats, "
          f"{a.threads} threads\n")
    print("| backend | vectors | throughput / shared vector (median, range) | throughput / unsteered | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['vectors']} | {r['vs_shared']:.3f} [{r['vs_shared_range'][0]:.3f}, "
              f"{r['vs_shared_range'][1]:.3f}] | {r['vs_unsteered']:.3f} | >= 0.97 |")
    Path(a.out).write_text(json.dumps({"settings": vars(a), "rows": rows,
                                       "seconds": {k: statistics.median(v) for k, v in t.items()}}, indent=2))
    plot(rows, Path(a.plot))
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for backend, marker in (("nnsight", "o"), ("hooks", "s")):
        pts = sorted((r["k"], r["vs_unsteered"]) for r in rows if r["backend"] == backend and "distinct" in r["vectors"])
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker=marker, label=f"steerlib, {backend} (CPU)")
    ax.plot(list(EASYSTEER), list(EASYSTEER.values()), "kx", markersize=9, mew=2,
            label="EasySteer, vLLM on a GPU, batch 256 (published points)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("distinct per-row vectors in the batch (K)")
    ax.set_ylabel("throughput / unsteered generate")
    ax.set_title("Per-row steering vectors: cost against K")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
