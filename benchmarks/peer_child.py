"""One peer library's steered generate against its own unsteered HF generate (run by benchmarks/peers.py).

Runs inside the peer's own virtual environment (transformers < 5), so it imports neither steerlib nor
anything of the parent's: the model folder, the token ids, the vector and the settings come from a
workload folder written by the parent. Prints one JSON object: per-repeat seconds of each case and
the steered token ids (to check every library steers the same way).

    python benchmarks/peer_child.py --library repeng --workload DIR --repeats 5
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file


def load_model(folder: Path) -> Any:
    """SmolLM2 from steerlib's cached folder (written by transformers 5), read by transformers 4."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    cfg.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    cfg.pop("dtype", None)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise SystemExit(f"cannot load {folder}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def timeit(fns: dict[str, Callable[[], Any]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    for f in fns.values():  # warm-up
        f()
    rng = random.Random(seed)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        names = list(fns)
        rng.shuffle(names)
        for k in names:
            t0 = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--library", choices=["repeng", "steering-vectors"], required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    w = Path(a.workload)
    meta = json.loads((w / "meta.json").read_text())
    t = load_file(str(w / "workload.safetensors"))
    ids, mask, vec = t["input_ids"], t["attention_mask"], t["vector"]
    layer, alpha, new = meta["layer"], meta["alpha"], meta["new_tokens"]
    model = load_model(Path(meta["model_dir"]))
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=meta["pad_token_id"])

    def plain() -> Any:
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, **kw)

    if a.library == "repeng":
        import numpy as np
        from repeng import ControlModel, ControlVector

        plain_model = model
        cm = ControlModel(load_model(Path(meta["model_dir"])), [layer])  # repeng wraps (mutates) its own copy
        cv = ControlVector(model_type="llama", directions={layer: vec.numpy().astype(np.float32)})

        def steered() -> Any:
            cm.set_control(cv, alpha)
            try:
                with torch.no_grad():
                    return cm.generate(input_ids=ids, attention_mask=mask, **kw)
            finally:
                cm.reset()

        assert plain_model is not cm.model
    else:
        from steering_vectors import SteeringVector

        sv = SteeringVector(layer_activations={layer: vec}, layer_type="decoder_block")

        def steered() -> Any:
            with sv.apply(model, multiplier=alpha), torch.no_grad():
                return model.generate(input_ids=ids, attention_mask=mask, **kw)

    tokens = steered()[:, ids.shape[1]:].tolist()
    times = timeit({"plain": plain, "steered": steered}, a.repeats)
    import transformers

    print(json.dumps({"library": a.library, "times": times, "steered_tokens": tokens,
                      "versions": {"transformers": transformers.__version__, "torch": torch.__version__}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
