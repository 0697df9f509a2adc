"""steerlib against the peer libraries on the same work: SmolLM2-135M-Instruct, the same token ids,
batch 8, 64 new tokens, one steered layer, the same vector.

    python -m benchmarks.peers                    # creates the peers' virtual environments once (pip)
    python -m benchmarks.peers --repeats 3 --new-tokens 16   # quicker

repeng 0.4.0 and steering-vectors 0.12.2 need transformers < 5, so each runs in its own virtual
environment under ``$STEERLIB_CACHE/bench-venvs`` (``~/.cache/steerlib/bench-venvs``), made by this
script with ``torch==2.13.0`` first, then ``transformers==4.57.6`` and the peer, pinned. Every library
gets the same left-padded token ids (encoded once by steerlib with SmolLM2's chat template: no double
BOS) and the same vector; each library's ratio is its steered generate over its own unsteered HF
generate, timed in alternating runs (a fresh random order per repeat), and its greedy steered tokens
are compared with steerlib's. Also measured here: the official L2S code's way of applying a vector
(a forward hook, one prompt at a time, batch 1), as throughput against batched unsteered generate.
Prints a table of ratios with their range over repeats and writes JSON. No assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmarks.run import PROMPTS, _ratios, timeit

PEERS = {"repeng": "repeng==0.4.0", "steering-vectors": "steering-vectors==0.12.2"}
PINNED = ["transformers==4.57.6", "safetensors", "numpy<2", "scikit-learn", "tqdm", "gguf", "accelerate"]


def venv_root() -> Path:
    return Path(os.environ.get("STEERLIB_CACHE", Path.home() / ".cache" / "steerlib")).expanduser() / "bench-venvs"


def ensure_venv(name: str) -> Path:
    """The peer's virtual environment (created and filled on first use); returns its python."""
    root = venv_root() / name
    py = root / "bin" / "python"
    ok = root / ".complete"
    if ok.is_file():
        return py
    print(f"creating {root} (torch==2.13.0 first, then {PEERS[name]}; a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *PINNED], check=True)
    subprocess.run([*pip, "--no-deps", PEERS[name]], check=True)
    ok.write_text(json.dumps({"peer": PEERS[name], "pinned": PINNED}))
    return py


def workload(sm: Any, folder: Path, layer: int, alpha: float, batch: int, new_tokens: int) -> dict[str, Any]:
    """The shared inputs: token ids (steerlib's encoding), a vector, the settings."""
    b = sm.encode(PROMPTS[:batch])
    g = torch.Generator().manual_seed(0)
    v = torch.randn(sm.hidden_size, generator=g)
    v = v / v.norm() * 4.0  # a steering-sized vector (SmolLM2's mid-layer P2S norms are a few units)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": b.input_ids.contiguous(), "attention_mask": b.attention_mask.contiguous(),
               "vector": v.contiguous()}, str(folder / "workload.safetensors"))
    pad = sm.tokenizer.pad_token_id if sm.tokenizer.pad_token_id is not None else sm.tokenizer.eos_token_id
    meta = {"layer": layer, "alpha": alpha, "new_tokens": new_tokens, "pad_token_id": pad,
            "model_dir": str(Path(sm.name)), "batch": batch}
    (folder / "meta.json").write_text(json.dumps(meta))
    return {**meta, "encoded": b, "vector": v}


def steerlib_side(sm: Any, w: dict[str, Any], repeats: int) -> dict[str, Any]:
    """steerlib (both backends) and the official code's hook, batch 1, against unsteered HF generate."""
    from steerlib import Intervention, SteerableModel

    b, v, layer, alpha, new = w["encoded"], w["vector"], w["layer"], w["alpha"], w["new_tokens"]
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=w["pad_token_id"])
    hooked = SteerableModel(sm.model, sm.processor, adapter=sm.adapter, validate=False, backend="hooks")
    iv = Intervention.build(layer, v, alpha=alpha)
    singles = [sm.encode([p]) for p in PROMPTS[:w["batch"]]]

    def hf() -> None:
        with torch.no_grad():
            sm.model.generate(**b.inputs, **kw)

    def official_hook() -> None:  # the official L2S code: a forward hook, one prompt at a time
        def add(_m: Any, _i: Any, out: Any) -> Any:
            h = out[0] if isinstance(out, tuple) else out
            h = h + alpha * v
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = sm.adapter.layers(sm.model)[layer].register_forward_hook(add)
        try:
            for s in singles:
                with torch.no_grad():
                    sm.model.generate(**s.inputs, **kw)
        finally:
            handle.remove()

    t = timeit({"hf": hf, "nnsight": lambda: sm.generate(b, iv, **{k: kw[k] for k in ("max_new_tokens", "min_new_tokens")}),
                "hooks": lambda: hooked.generate(b, iv, **{k: kw[k] for k in ("max_new_tokens", "min_new_tokens")}),
                "official": official_hook}, repeats)
    tokens = sm.generate(b, iv, max_new_tokens=new, min_new_tokens=new).new_tokens.tolist()
    return {"times": t, "tokens": tokens}


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of generated positions where two libraries chose the same token (greedy, same inputs)."""
    pairs = [(x, y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peers", default=",".join(PEERS), help="comma list of " + ", ".join(PEERS))
    p.add_argument("--out", default="benchmarks/peers.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from steerlib.zoo import load_steerable

    sm = load_steerable("smollm2")
    folder = venv_root() / "workload"
    w = workload(sm, folder, a.layer, a.alpha, a.batch, a.new_tokens)
    t0 = time.perf_counter()
    ours = steerlib_side(sm, w, a.repeats)
    rows: list[dict[str, Any]] = []
    n_tokens = a.batch * a.new_tokens

    def add_row(library: str, times: dict[str, list[float]], num: str, den: str, tokens: list[list[int]] | None,
                note: str) -> None:
        ratios = _ratios(times, num, den)
        rows.append({"library": library, "ratio": statistics.median(ratios), "range": [ratios[0], ratios[-1]],
                     "tokens_per_s": n_tokens / statistics.median(times[num]),
                     "unsteered_tokens_per_s": n_tokens / statistics.median(times[den]),
                     "same_tokens_as_steerlib": None if tokens is None else agreement(tokens, ours["tokens"]),
                     "note": note})

    add_row("steerlib (nnsight backend)", ours["times"], "nnsight", "hf", ours["tokens"], "transformers 5.24")
    add_row("steerlib (hooks backend)", ours["times"], "hooks", "hf", None, "transformers 5.24")
    add_row("official L2S code's hook, batch 1", ours["times"], "official", "hf", None,
            "one prompt at a time, against batched unsteered generate")
    for name in [x for x in a.peers.split(",") if x]:
        py = ensure_venv(name)
        proc = subprocess.run([str(py), str(Path(__file__).with_name("peer_child.py")), "--library", name,
                               "--workload", str(folder), "--repeats", str(a.repeats), "--threads", str(a.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        add_row(f"{name} {PEERS[name].split('==')[1]}", got["times"], "steered", "plain", got["steered_tokens"],
                f"transformers {got['versions']['transformers']}, own venv")
    print(f"\nbatch {a.batch}, {a.new_tokens} new tokens, layer {a.layer}, alpha {a.alpha}, {a.threads} threads, "
          f"{a.repeats} repeats ({time.perf_counter() - t0:.0f} s)\n")
    print("| library | steered / own unsteered generate (median, range) | steered tokens/s | unsteered tokens/s "
          "| same greedy tokens as steerlib |")
    print("|---|---|---|---|---|")
    for r in rows:
        same = "-" if r["same_tokens_as_steerlib"] is None else f"{r['same_tokens_as_steerlib']:.3f}"
        print(f"| {r['library']} | {r['ratio']:.3f} [{r['range'][0]:.3f}, {r['range'][1]:.3f}] | "
              f"{r['tokens_per_s']:.0f} | {r['unsteered_tokens_per_s']:.0f} | {same} |")
    Path(a.out).write_text(json.dumps({"settings": vars(a), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
