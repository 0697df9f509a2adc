"""Remote-simulated against local, measured: for every built-in tiny family (and SmolLM2 with
``--real``), the largest difference between a pass run locally and the same pass run through
``remote="local"`` (nnsight's offline stand-in for NDIF, made strict by steerlib.remote), with the
request and response sizes and the number of requests. Prints a table; asserts nothing.

    HF_HUB_OFFLINE=1 python benchmarks/remote_vs_local.py [--real]
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from steerlib import ContrastiveItem, Intervention, SteerableModel
from steerlib.steerers import L2S, MeanSteer, extract_p2s
from steerlib.testing import FAMILIES, VLM_FAMILIES, build_tiny, tiny_image

PROMPTS = ["Hello there friend, how are you doing today?", "Hi"]


def diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(diff(x, y) for x, y in zip(a, b, strict=True))
    return float((a.float() - b.float()).abs().max())


def items(n: int = 6) -> list[ContrastiveItem]:
    return [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.",
                            behavior="harmful" if i % 2 else "benign") for i in range(n)]


def family_row(name: str, loc: SteerableModel, rem: SteerableModel, vlm: bool, layer: int) -> dict[str, object]:
    b = loc.encode(PROMPTS, [[tiny_image(0)], [tiny_image(1)]] if vlm else None)
    reads = [(0, "last_prompt"), (loc.num_layers - 1, "prompt_mean"), (layer, "per_token")]
    r_l, r_r = loc.read_many(b, reads), rem.read_many(b, reads)
    read_bytes = rem._tracer.last.result_bytes
    v = torch.randn(2, loc.hidden_size, generator=torch.Generator().manual_seed(0))
    iv = Intervention.build(layer, v, alpha=3.0)
    g_l = loc.generate(b, iv, max_new_tokens=4, output_logits=True)
    g_r = rem.generate(b, iv, max_new_tokens=4, output_logits=True)
    sim = rem._tracer.last
    return {"model": name, "reads": max(diff(r_l[k], r_r[k]) for k in r_l),
            "logits": diff(g_l.logits, g_r.logits), "tokens": torch.equal(g_l.sequences, g_r.sequences),
            "request_kB": sim.payload_bytes / 1e3, "response_kB": sim.result_bytes / 1e3, "read_kB": read_bytes / 1e3}


def steerer_rows(loc: SteerableModel, rem: SteerableModel, layer: int, other: int) -> list[str]:
    its = items()
    out = []
    f_l = extract_p2s(loc, its, layer, input_layer=other, progress=False)
    f_r = extract_p2s(rem, its, layer, input_layer=other, progress=False)
    out.append(f"P2S extraction (z, h):          max diff {max(diff(f_l.z, f_r.z), diff(f_l.h, f_r.h)):.2e}")
    m_l, m_r = MeanSteer(layer, progress=False).fit(loc, its), MeanSteer(layer, progress=False).fit(rem, its)
    g_l = m_l.generate_batch(loc, PROMPTS, max_new_tokens=4, output_logits=True)
    g_r = m_r.generate_batch(rem, PROMPTS, max_new_tokens=4, output_logits=True)
    out.append(f"Mean-S fit + steered generate:  max logit diff {diff(g_l.logits, g_r.logits):.2e}, "
               f"tokens identical {torch.equal(g_l.sequences, g_r.sequences)}")
    b = loc.encode(PROMPTS)
    for steer, source in ((layer, other if other < layer else layer), (other if other < layer else layer, layer)):
        fits = []
        for sm in (loc, rem):
            torch.manual_seed(0)
            fits.append(L2S(steer, input_layer=source, hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, its))
        n0 = rem._tracer.requests
        g_r = rem.generate(b, fits[1].intervention(rem, its, b, alpha=4.0), max_new_tokens=4, output_logits=True)
        n = rem._tracer.requests - n0
        g_l = loc.generate(b, fits[0].intervention(loc, its, b, alpha=4.0), max_new_tokens=4, output_logits=True)
        where = "g in the pass" if source <= steer else "extra prefill"
        out.append(f"L2S L*={steer} L'={source} ({where}): max logit diff {diff(g_l.logits, g_r.logits):.2e}, tokens "
                   f"identical {torch.equal(g_l.sequences, g_r.sequences)}, {n} request(s), "
                   f"{rem._tracer.last.payload_bytes / 1e3:.0f} kB sent")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="also SmolLM2-135M-Instruct (real weights)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rows = []
    for fam in FAMILIES:
        t = build_tiny(fam)
        rows.append(family_row(fam, SteerableModel(t.model, t.processor),
                               SteerableModel(t.model, t.processor, remote="local"), fam in VLM_FAMILIES, 1))
    if args.real:
        from steerlib.zoo import load_steerable

        loc = load_steerable("smollm2")
        rows.append(family_row("smollm2", loc, SteerableModel(loc.model, loc.processor, remote="local"), False, 12))
    print(f"{'model':<12} {'reads':>9} {'logits':>9} {'tokens':>7} {'request kB':>11} {'gen resp kB':>12} {'read resp kB':>13}")
    for r in rows:
        print(f"{r['model']:<12} {r['reads']:>9.1e} {r['logits']:>9.1e} {str(r['tokens']):>7} {r['request_kB']:>11.1f} "
              f"{r['response_kB']:>12.1f} {r['read_kB']:>13.1f}")
    print(f"largest: reads {max(r['reads'] for r in rows):.1e}, logits {max(r['logits'] for r in rows):.1e}, "
          f"all tokens identical: {all(r['tokens'] for r in rows)}")
    t = build_tiny("llama")
    print("\nsteerers on tiny llama:")
    for line in steerer_rows(SteerableModel(t.model, t.processor), SteerableModel(t.model, t.processor, remote="local"),
                             1, 0):
        print("  " + line)


if __name__ == "__main__":
    main()
