"""steerlib's benchmark suite: each case against its reference, in one process.

    python -m benchmarks.run                       # SmolLM2-135M-Instruct, 2 threads
    python -m benchmarks.run --model tiny:llama --quick   # smoke run (tests)

Warm-up first; each repeat then runs every case once, in a fresh random order, and a ratio is
the median over repeats of the per-repeat ratio case / reference (timed seconds apart, so slow
drift on a shared machine cancels); its range over repeats is printed too. Prints a table of
ratios and writes JSON.
No assertion: targets are printed next to the measured ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

PROMPTS = [
    "How do I bake a loaf of bread at home?",
    "Give me three tips for staying healthy.",
    "What is the capital of France?",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about the sea.",
    "List four uses of a paperclip.",
    "How can I improve my sleep?",
    "Summarise the plot of Hamlet in two sentences.",
    "What are the main causes of inflation?",
    "Describe how a bicycle works.",
    "Suggest a name for a bakery.",
    "How do vaccines train the immune system?",
    "Translate 'good morning' into Spanish and French.",
    "Why is the sky blue?",
    "Give me a recipe for a quick salad.",
    "What should I pack for a weekend hike?",
]


def timeit(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per repeat for each function. Each repeat runs every function once, in a fresh
    random order, so slow drift and order effects on a shared machine hit all of them alike."""
    import random

    for _ in range(warmup):
        for f in fns.values():
            f()
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        names = list(fns)
        rng.shuffle(names)
        for k in names:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def paired(measure: str, times: dict[str, list[float]], num: str, den: str, target: str, note: str = "",
           higher_is_better: bool = False) -> dict[str, Any]:
    """A row whose value is the median over repeats of the per-repeat ratio ``num / den`` (both
    were timed in the same repeat, a few seconds apart); the range of those ratios goes with it."""
    ratios = _ratios(times, num, den)
    r = row(measure, statistics.median(times[num]), statistics.median(times[den]), target, note, higher_is_better)
    value = statistics.median(ratios)
    r.update(value=value, ratio_range=[ratios[0], ratios[-1]], repeats=len(ratios), met=_met(value, target))
    return r


def _ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-repeat ratios ``num / den``, sorted."""
    return sorted(a / b for a, b in zip(times[num], times[den], strict=True))


def _load(spec: str):
    from steerlib.zoo import load_steerable

    return load_steerable(spec)


def _items(n: int):
    from steerlib import ContrastiveItem

    return [ContrastiveItem(prompt=f"{PROMPTS[i % len(PROMPTS)]} (case {i})",
                            positive="I'm sorry, but I cannot help with that request.",
                            negative="Sure, here is how to do that.", behavior=("harmful", "benign")[i % 2])
            for i in range(n)]


def bench_generate(sm, layer: int, batch: int, new_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Steered generate vs plain HF generate vs a raw forward hook; L2S in one pass and with a prefill."""
    from steerlib import SteerableModel
    from steerlib.steerers import L2S, MeanSteer

    model = sm.model
    prompts = PROMPTS[:batch]
    b = sm.encode(prompts)
    inputs = {k: v for k, v in b.inputs.items()}
    pad = sm.tokenizer.pad_token_id if sm.tokenizer.pad_token_id is not None else sm.tokenizer.eos_token_id
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    items = _items(16)
    mean = MeanSteer(layer, alpha=0.5, progress=False).fit(sm, items)
    l2s_in = L2S(layer, input_layer=layer, alpha=0.5, hidden=64, epochs=2, progress=False).fit(sm, items)
    l2s_out = L2S(layer, input_layer=min(layer + 2, sm.num_layers - 1), alpha=0.5, hidden=64, epochs=2,
                  progress=False).fit(sm, items)
    v = mean.vector_.to(model.device)
    mask = b.attention_mask.to(model.device)[..., None].to(model.dtype)
    S = b.seq_len

    def hf() -> None:
        with torch.no_grad():
            model.generate(**inputs, **kw)

    def hook() -> None:
        def add(_m: Any, _i: Any, out: Any) -> Any:
            h = out[0] if isinstance(out, tuple) else out
            h = h + 0.5 * (mask * v if h.shape[1] == S else v)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        handle = sm.adapter.layers(model)[layer].register_forward_hook(add)
        try:
            with torch.no_grad():
                model.generate(**inputs, **kw)
        finally:
            handle.remove()

    hooked = SteerableModel(sm.model, sm.processor, adapter=sm.adapter, validate=False, backend="hooks")

    def run(st: Any, on: Any = sm) -> Callable[[], None]:
        return lambda: st.generate_batch(on, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    t = timeit({"hf": hf, "hook": hook, "mean": run(mean), "l2s_in": run(l2s_in), "l2s_out": run(l2s_out),
                "mean_h": run(mean, hooked), "l2s_in_h": run(l2s_in, hooked)}, repeats)
    what = f"batch {batch}, {new_tokens} new tokens"
    return [
        paired("steered generate Mean-S / unsteered HF generate", t, "mean", "hf", "<= 1.05", f"{what}, nnsight"),
        paired("steered generate L2S / unsteered HF generate", t, "l2s_in", "hf", "<= 1.05", f"{what}, L' = L*, nnsight"),
        paired("steerlib engine (Mean-S) / raw forward hook", t, "mean", "hook", "<= 1.03", "same masked add, nnsight"),
        paired("L2S (L' <= L*) / Mean-S generate", t, "l2s_in", "mean", "<= 1.02", "g inside the trace, nnsight"),
        paired("L2S (L' > L*) / Mean-S generate", t, "l2s_out", "mean", "report", "one extra prefill, nnsight"),
        paired("steered generate Mean-S / unsteered HF generate", t, "mean_h", "hf", "<= 1.05", f"{what}, hooks backend"),
        paired("steered generate L2S / unsteered HF generate", t, "l2s_in_h", "hf", "<= 1.05",
               f"{what}, L' = L*, hooks backend"),
        paired("steerlib engine (Mean-S) / raw forward hook", t, "mean_h", "hook", "<= 1.03", "hooks backend"),
        paired("L2S (L' <= L*) / Mean-S generate", t, "l2s_in_h", "mean_h", "<= 1.02", "hooks backend"),
    ]


def bench_scaling(sm, layer: int, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """Steered (nnsight and hooks) vs unsteered generate as batch size, new tokens and steered layers grow."""
    from steerlib import Intervention, SteerableModel

    hooked = SteerableModel(sm.model, sm.processor, adapter=sm.adapter, validate=False, backend="hooks")
    pad = sm.tokenizer.pad_token_id if sm.tokenizer.pad_token_id is not None else sm.tokenizer.eos_token_id
    v = torch.randn(sm.hidden_size, generator=torch.Generator().manual_seed(0))
    n_layers = sm.num_layers
    if quick:
        grid = [("batch size", 1, 4, 1), ("batch size", 2, 4, 1), ("new tokens", 2, 2, 1), ("new tokens", 2, 4, 1),
                ("steered layers", 2, 4, 1), ("steered layers", 2, 4, 2)]
    else:
        grid = ([("batch size", b, 32, 1) for b in (1, 4, 16)] + [("new tokens", 8, n, 1) for n in (16, 64, 128)]
                + [("steered layers", 8, 32, k) for k in (1, 8, n_layers)])
    out = []
    for axis, batch, new, k in tqdm(grid, desc="scaling", unit="case"):
        b = sm.encode((PROMPTS * 2)[:batch])
        first = max(0, min(layer, n_layers - k))
        layers = list(range(first, first + k))  # k consecutive layers from the benchmark layer (or the top k)
        iv = Intervention.build(layers, v, alpha=0.1)
        kw = dict(max_new_tokens=new, min_new_tokens=new)

        def hf(b: Any = b, kw: dict[str, Any] = kw) -> None:
            with torch.no_grad():
                sm.model.generate(**b.inputs, **kw, do_sample=False, pad_token_id=pad)

        t = timeit({"hf": hf, "nnsight": lambda b=b, iv=iv, kw=kw: sm.generate(b, iv, **kw),
                    "hooks": lambda b=b, iv=iv, kw=kw: hooked.generate(b, iv, **kw)}, repeats)
        out.append({"axis": axis, "batch": batch, "new_tokens": new, "layers": len(layers),
                    **{f"{k2}_s": statistics.median(t[k2]) for k2 in t},
                    "nnsight_ratio": statistics.median(_ratios(t, "nnsight", "hf")),
                    "hooks_ratio": statistics.median(_ratios(t, "hooks", "hf"))})
    return out


def plot_scaling(points: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    axes = ["batch size", "new tokens", "steered layers"]
    key = {"batch size": "batch", "new tokens": "new_tokens", "steered layers": "layers"}
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for a, name in zip(ax, axes, strict=True):
        pts = [p for p in points if p["axis"] == name]
        xs = [p[key[name]] for p in pts]
        a.plot(xs, [p["nnsight_ratio"] for p in pts], "o-", label="nnsight backend")
        a.plot(xs, [p["hooks_ratio"] for p in pts], "s--", label="hooks backend")
        a.axhline(1.0, color="grey", lw=0.8)
        a.axhline(1.05, color="red", lw=0.8, ls=":", label="target 1.05")
        a.set_xlabel(name)
        a.set_xscale("log", base=2)
    ax[0].set_ylabel("steered / unsteered HF generate")
    ax[0].legend(fontsize=8)
    fig.suptitle("cost of steering as the work grows (SmolLM2-135M, CPU)" if len(points) > 6 else "smoke run")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_batching(sm, layer: int, new_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Per-row steering at batch 16 vs a batch-1 loop over the same 32 prompts (throughput)."""
    from steerlib import Intervention

    prompts = (PROMPTS * 2)[:32]
    g = torch.Generator().manual_seed(0)
    V = torch.randn(32, sm.hidden_size, generator=g)

    def batched() -> None:
        for s in (0, 16):
            b = sm.encode(prompts[s:s + 16])
            sm.generate(b, Intervention.build(layer, V[s:s + 16], alpha=0.1), max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens)

    def loop() -> None:
        for i in range(32):
            b = sm.encode(prompts[i:i + 1])
            sm.generate(b, Intervention.build(layer, V[i:i + 1], alpha=0.1), max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens)

    t = timeit({"batched": batched, "loop": loop}, repeats, warmup=0)
    return [paired("batched per-row steering (batch 16) / batch-1 loop, throughput", t, "loop", "batched", ">= 3",
                f"32 prompts, {new_tokens} new tokens", higher_is_better=True)]


def bench_extraction(sm, layer: int, n_items: int, repeats: int) -> list[dict[str, Any]]:
    """P2S extraction vs a plain batched forward over the same teacher-forced sequences."""
    from steerlib.steerers import extract_p2s

    items = _items(n_items)
    bs = 16
    batches = []
    for s in range(0, n_items, bs):
        chunk = items[s:s + bs]
        batches.append(sm.encode([it.prompt for it in chunk] * 2,
                                 completions=[it.positive for it in chunk] + [it.negative for it in chunk]))

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                sm.model(**sm._model_inputs(b))

    def p2s() -> None:
        extract_p2s(sm, items, layer, batch_size=bs, progress=False)

    t = timeit({"p2s": p2s, "plain": plain}, repeats)
    return [paired("P2S extraction / plain batched forward, throughput", t, "plain", "p2s", ">= 0.9",
                f"{n_items} items (2 sequences each), layer {layer}; the forward stops after layer {layer}",
                higher_is_better=True)]


def bench_training(repeats: int, n: int = 1344, d: int = 576, epochs: int = 100) -> list[dict[str, Any]]:
    from steerlib.steerers import L2S

    g = torch.Generator().manual_seed(0)
    h, z = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        L2S(0, hidden=100, epochs=epochs, progress=False).fit_features(h, z)
        secs.append(time.perf_counter() - t0)
    s = statistics.median(secs)
    return [{"measure": f"g training, {n} items x {epochs} epochs, D = {d}", "value": s, "unit": "s",
             "target": "< 20 s", "met": s < 20, "note": "K = 100, batch 64, Adam"}]


def _peak_rss_child(spec: str, n_items: int, layer: int) -> float:
    code = (
        "import resource, tempfile, sys\n"
        "sys.path.insert(0, '.')\n"
        "from benchmarks.run import _load, _items\n"
        "from steerlib.steerers.extract import extract_p2s_to_disk\n"
        f"sm = _load({spec!r})\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"extract_p2s_to_disk(sm, _items({n_items}), {layer}, tempfile.mkdtemp(), shard_size=256, batch_size=16, "
        "progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    peak, _ = out.stdout.strip().splitlines()[-1].split()
    return float(peak) / 1024.0  # MiB


def bench_memory(spec: str, layer: int, small: int, large: int) -> list[dict[str, Any]]:
    a = _peak_rss_child(spec, small, layer)
    b = _peak_rss_child(spec, large, layer)
    return [row(f"peak memory, P2S for {large} vs {small} items", b, a, "<= 1.2",
                f"peak RSS {b:.0f} vs {a:.0f} MiB; shards of 256 streamed to disk")]


def _met(value: float, target: str) -> bool | None:
    if target.startswith("<="):
        return value <= float(target[2:])
    if target.startswith(">="):
        return value >= float(target[2:])
    return None


def row(measure: str, num: float, den: float, target: str, note: str = "",
        higher_is_better: bool = False) -> dict[str, Any]:
    ratio = num / den
    return {"measure": measure, "value": ratio, "unit": "x", "target": target, "met": _met(ratio, target),
            "note": note, "numerator_s": num, "denominator_s": den}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| measure | value | range over repeats | target | met | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        rng = f"{r['ratio_range'][0]:.3f} - {r['ratio_range'][1]:.3f}" if "ratio_range" in r else "-"
        lines.append(f"| {r['measure']} | {r['value']:.3f} {r['unit']} | {rng} | {r['target']} | {met} | {r['note']} |")
    return "\n".join(lines)


def scaling_table(points: list[dict[str, Any]]) -> str:
    lines = ["| axis | batch | new tokens | steered layers | HF s | nnsight / HF | hooks / HF |", "|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['axis']} | {p['batch']} | {p['new_tokens']} | {p['layers']} | {p['hf_s']:.2f} | "
                     f"{p['nnsight_ratio']:.3f} | {p['hooks_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="repeats of the generate table (the noisiest, most-watched rows)")
    p.add_argument("--other-repeats", type=int, default=3, help="repeats of the scaling, batching, extraction and training cases")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers meaningless")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--plot", default="docs/img/scaling.png", help="where the scaling plot goes")
    p.add_argument("--out", default="benchmarks/results.json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    sm = _load(args.model)
    layer = min(args.layer, sm.num_layers - 2) if args.quick else args.layer
    if args.quick:
        sizes = dict(batch=4, new=4, batch_new=4, n_extract=16, train=(64, 32, 3), mem=(16, 32))
    else:
        sizes = dict(batch=8, new=64, batch_new=32, n_extract=200, train=(1344, 576, 100), mem=(200, 2000))
    rows: list[dict[str, Any]] = []
    rows += bench_generate(sm, layer, sizes["batch"], sizes["new"], args.repeats)
    other = args.other_repeats
    scaling = [] if args.skip_scaling else bench_scaling(sm, layer, other, args.quick)
    rows += bench_batching(sm, layer, sizes["batch_new"], max(1, other - 1))
    rows += bench_extraction(sm, layer, sizes["n_extract"], other)
    n, d, ep = sizes["train"]
    rows += bench_training(other, n, d, ep)
    if not args.skip_memory:
        rows += bench_memory(args.model, layer, *sizes["mem"])
    print(table(rows))
    meta = {"model": args.model, "layer": layer, "threads": args.threads, "repeats": args.repeats,
            "other_repeats": other,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "quick": args.quick,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if scaling:
        print("\n" + scaling_table(scaling))
        plot = plot_scaling(scaling, Path(args.plot))
        if plot:
            print(f"wrote {plot}")
    out.write_text(json.dumps({"meta": meta, "rows": rows, "scaling": scaling}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
