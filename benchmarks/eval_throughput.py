"""Evaluation throughput: ``compare`` on the demo's workload against a plain loop, and the share of
the time spent outside the model.

    python -m benchmarks.eval_throughput                   # SmolLM2, the demo's validation split, 32 tokens
    python -m benchmarks.eval_throughput --model tiny:llama --scale 0.1   # smoke run

The workload: the demo's validation prompts (88 at scale 1) under three configurations (unsteered,
Mean-S and the selective L2S at layer 15, alpha 0.75, fitted once on the demo's training split
beforehand), greedy, 32 new tokens. ``compare`` runs it end to end on a cold store (its length
buckets, rows an L2S gate leaves unsteered taken from the unsteered run, every record written);
the reference is the same work as a plain loop over ``Steerer.generate``, one prompt at a time.
Time inside the model is the wall time between a forward pre-hook and a forward hook on the HF
model (each decode step, the prefill, nnsight's interleaving inside it, passes stopped early); everything else (encoding,
building interventions, length bucketing, the store, scoring) is "outside". No assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


class ModelClock:
    """Wall seconds spent inside ``module.forward`` (top level only)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._t0: float | None = None
        # always_call: a pass that stops early (L2S reading g's input up to its layer raises inside
        # forward) still counts as time inside the model
        self._handles = [module.register_forward_pre_hook(self._enter),
                         module.register_forward_hook(self._leave, always_call=True)]

    def _enter(self, *_: Any) -> None:
        self._t0 = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--scale", type=float, default=1.0, help="demo split sizes x this")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--alpha", type=float, default=0.75)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/eval_throughput.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from steerlib.app.recipes import demo_steerers
    from steerlib.data import demo_items
    from steerlib.eval.compare import compare
    from steerlib.steerers import NoSteer, fit_sharing_extraction
    from steerlib.zoo import load_steerable

    sm = load_steerable(a.model)
    layer = min(a.layer, sm.num_layers - 1)
    splits = demo_items(a.scale)
    train, evals = splits["train"], splits["val"]
    steerers = demo_steerers(layer, input_layer=min(12, layer))
    fit_sharing_extraction(sm, train, steerers, progress=False)
    methods = {"none": NoSteer().fit(sm, []), **steerers}
    n_gen = len(evals) * len(methods)

    clock = ModelClock(sm.model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        compare(sm, train, evals, methods, alphas={"*": [a.alpha]}, layers=[layer], out_dir=tmp,
                max_new_tokens=a.new_tokens, batch_size=64, batching="length", max_batch_tokens=4096,
                reuse_unsteered_rows=True, progress=False)
    t_compare = time.perf_counter() - t0
    in_compare, clock.seconds = clock.seconds, 0.0

    t0 = time.perf_counter()
    for name, st in methods.items():
        for it in evals:
            st.generate(sm, [it], alpha=a.alpha, max_new_tokens=a.new_tokens, batch_size=1, progress=False)
    t_loop = time.perf_counter() - t0
    in_loop = clock.seconds
    clock.close()
    res = {
        "generations": n_gen,
        "compare_seconds": t_compare, "compare_prompts_per_s": n_gen / t_compare,
        "compare_share_outside_model": 1 - in_compare / t_compare,
        "loop_seconds": t_loop, "loop_prompts_per_s": n_gen / t_loop, "loop_share_outside_model": 1 - in_loop / t_loop,
        "speedup": t_loop / t_compare, "settings": vars(a),
    }
    print(f"\n{a.model}: {len(evals)} prompts x {len(methods)} configurations ({n_gen} generations), "
          f"{a.new_tokens} new tokens, {a.threads} threads\n")
    print("| runner | seconds | generations / s | share of time outside the model (target < 5 %) |")
    print("|---|---|---|---|")
    print(f"| compare (cold store, length buckets, gated rows reused) | {t_compare:.1f} | {n_gen / t_compare:.2f} | "
          f"{res['compare_share_outside_model']:.1%} |")
    print(f"| loop over Steerer.generate, one prompt at a time | {t_loop:.1f} | {n_gen / t_loop:.2f} | "
          f"{res['loop_share_outside_model']:.1%} |")
    print(f"\ncompare / loop speed-up: {res['speedup']:.1f}x")
    Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
