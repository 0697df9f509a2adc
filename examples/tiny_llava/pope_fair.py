"""Hallucination steering on the tiny LLaVA given a fair chance (issue 23): all the training questions the labels
allow, every setting chosen on validation images, the held-out images only for the final table.

Protocol (docs/tiny-llava.md, "The fair protocol"):

* test = the 32 images the projector was evaluated on (``projector.json``); steerer data = the 94 projector-training
  images, of which a seeded 16 are validation images and the rest fit images; the chosen configuration is refitted
  on all 94 for the final table;
* training questions: every present class of a fit image ("yes") plus one absent class per positive ("no"), the kind
  in turn (random, popular, adversarial) -- mix ``balanced``; or one negative of every kind per positive -- mix
  ``kinds`` (class-balanced loss);
* completions "{Yes|No}, the image" (prefix), the paper's L2S POPE settings as the starting point;
* selection (mean accuracy over the three POPE splits of the validation images), coordinate-wise: layer x input
  position x alpha, then g's input layer, then the gate, then the mix; Mean-S and Mean-S(BA) choose their alpha;
* final table per POPE split on the test images: No-steer, Mean-S, Mean-S(BA), Norm-Rnd, L2S, P2S (oracle):
  accuracy, F1 (standard), F1(code) = 2 Acc / (1 + Acc), yes-ratio, image-bootstrap intervals, paired differences
  against No-steer; a learning curve of L2S's gain against the number of training questions.

    python examples/tiny_llava/pope_fair.py --out runs/tiny_llava_pope_fair
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, LabelledImage, class_stats, load_coco128, question
from pope_eval import SPLITS, bootstrap, ci, margins, memoize_vision_tower, metrics, split_members

from steerlib import Intervention, SteerableModel
from steerlib.data.items import stable_seed
from steerlib.data.templates import apply_template, pope_template
from steerlib.steerers import L2S, MeanSteer, MeanSteerBA
from steerlib.steerers.extract import extract_p2s_layers

VAL_SEED = 23
KINDS = ("random", "popular", "adversarial")
PAPER_L2S = dict(hidden=100, init="svd", epochs=100, lr=5e-5, scheduler="cosine", warmup_epochs=50, cos_weight=0.1,
                 cos_warmup_epochs=100, class_balance=True, keep_best=True, val_fraction=0.1)


# ------------------------------------------------------------------------------------------------
# Questions
# ------------------------------------------------------------------------------------------------

def training_pairs(images: list[LabelledImage], stats_images: list[LabelledImage], n_classes: int, mix: str,
                   seed: int) -> list[tuple[LabelledImage, int, str]]:
    """(image, class, "yes"/"no"): every present class, plus negatives per positive (``balanced``: one, the kind in
    turn; ``kinds``: one of every kind), never repeating a class within an image."""
    freq, co = class_stats(stats_images)
    out = []
    turn = 0
    for im in images:
        pos = sorted(im.classes)
        absent = [c for c in range(n_classes) if c not in im.classes]
        rng = random.Random(f"{seed}:{im.id}")
        ranked = {
            "random": rng.sample(absent, len(absent)),
            "popular": sorted(absent, key=lambda c: (-freq[c], c)),
            "adversarial": sorted(absent, key=lambda c: (-sum(co.get(p, {}).get(c, 0) for p in pos), -freq[c], c)),
        }
        used: set[int] = set()

        def take(kind: str) -> int | None:
            for c in ranked[kind]:
                if c not in used:
                    used.add(c)
                    return c
            return None

        out += [(im, c, "yes") for c in pos]
        for _ in pos:
            kinds = KINDS if mix == "kinds" else (KINDS[turn % 3],)
            turn += 1
            for k in kinds:
                c = take(k)
                if c is not None:
                    out.append((im, c, "no"))
    return out


def items_of(pairs: list[tuple[LabelledImage, int, str]], names: list[str], tag: str) -> list[Any]:
    return [apply_template(question(names[c]), pope_template(lab), images=(im.path,), id=f"{tag}-{im.id}-{c}")
            for im, c, lab in pairs]


def split_set(images: list[LabelledImage], stats_images: list[LabelledImage], names: list[str], seed: int,
              tag: str) -> dict[str, Any]:
    """The union of the three POPE splits of ``images`` as items, with each split's row indices."""
    members = split_members(images, stats_images, len(names), seed)
    union = sorted({p for s in SPLITS for p in members[s]})
    pairs = [(images[k], c, "yes" if c in images[k].classes else "no") for k, c in union]
    upos = {p: i for i, p in enumerate(union)}
    return {"items": items_of(pairs, names, tag), "label": torch.tensor([int(lab == "yes") for _, _, lab in pairs]),
            "group": torch.tensor([k for k, _ in union]),
            "rows": {s: torch.tensor([upos[p] for p in members[s]]) for s in SPLITS}}


# ------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def prompt_states(sm: SteerableModel, items: list[Any], layers: list[int], positions: list[str],
                  batch_size: int) -> dict[tuple[int, str], torch.Tensor]:
    """States at the last prompt token (with / without the generation prompt) of every item, from prompt-only
    passes (causal: the same as inside the teacher-forced passes)."""
    reqs = [(l, p) for l in layers for p in positions]
    out: dict[tuple[int, str], list[torch.Tensor]] = {r: [] for r in reqs}
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        batch = sm.encode([it.prompt for it in chunk], [list(it.images) for it in chunk])
        got = sm.read_many(batch, reqs)
        for r in reqs:
            out[r].append(got[r].float())
    return {r: torch.cat(v) for r, v in out.items()}


class Features:
    """P2S targets at the candidate layers and prompt states at every candidate input layer, for one item list."""

    def __init__(self, sm: SteerableModel, items: list[Any], layers: list[int], src_layers: list[int],
                 positions: list[str], args: argparse.Namespace) -> None:
        self.items = items
        f = extract_p2s_layers(sm, items, layers, reduction=args.reduction, batch_size=args.batch_size,
                               continuation_tokens=args.continuation_tokens, seed=args.seed, progress=True)
        self.z = {l: f[l].z for l in layers}
        self.h = prompt_states(sm, items, src_layers, positions, args.batch_size)

    def subset(self, idx: list[int]) -> "Features":
        new = object.__new__(Features)
        new.items = [self.items[i] for i in idx]
        new.z = {l: v[idx] for l, v in self.z.items()}
        new.h = {k: v[idx] for k, v in self.h.items()}
        return new


def fit_l2s(sm: SteerableModel, feats: Features, cfg: dict[str, Any], args: argparse.Namespace) -> L2S:
    params = {**PAPER_L2S, "epochs": args.epochs}
    l2s = L2S(cfg["layer"], input_layer=cfg["input_layer"], input_position=cfg["position"], alpha=cfg["alpha"],
              gate=cfg["gate"], seed=args.seed, progress=False, **params)
    return l2s.fit_from_p2s(sm, feats.items, feats.z[cfg["layer"]], feats.h[(cfg["input_layer"], cfg["position"])])


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------

def score(sm: SteerableModel, ev: dict[str, Any], steer: Any, yes: int, no: int, args: argparse.Namespace,
          desc: str) -> torch.Tensor:
    items = ev["items"]
    return margins(sm, [it.prompt for it in items], [Path(it.images[0]) for it in items], yes, no,
                   batch_size=args.batch_size, steer=steer, items=items, desc=desc)


def split_acc(ev: dict[str, Any], s: torch.Tensor) -> float:
    """Selection score: mean accuracy over the three POPE splits."""
    return sum(float(((s[r] > 0).long() == ev["label"][r]).float().mean()) for r in ev["rows"].values()) / len(SPLITS)


def static(layer: int, vec: torch.Tensor, alpha: float) -> Any:
    return lambda chunk, batch: Intervention.build(layer, vec[None].expand(len(chunk), -1).contiguous(), alpha=alpha)


def per_item(layer: int, z: torch.Tensor, items: list[Any], alpha: float) -> Any:
    pos = {id(it): i for i, it in enumerate(items)}
    return lambda chunk, batch: Intervention.build(layer, z[[pos[id(it)] for it in chunk]], alpha=alpha)


def norm_random(z: torch.Tensor, items: list[Any], seed: int) -> torch.Tensor:
    """Norm-Rnd vectors as ``steerlib.steerers.NormRandom`` draws them (seed and item id), scaled to ``z``'s norms."""
    out = torch.empty_like(z)
    for i, it in enumerate(items):
        g = torch.Generator().manual_seed(stable_seed(f"{seed}:{it.id}"))
        d = torch.randn(z.shape[1], generator=g)
        out[i] = d / d.norm() * z[i].norm()
    return out


def full_metrics(s: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    m = metrics(s, label)
    m["f1_code"] = 2 * m["acc"] / (1 + m["acc"])  # the paper code's "F1" (precision_recall_fscore_support on matches)
    return m


KEYS = ("acc", "f1", "f1_code", "yes_ratio")


def summary(s: torch.Tensor, label: torch.Tensor, group: torch.Tensor, n_boot: int, seed: int,
            ref: torch.Tensor | None) -> dict[str, Any]:
    point = full_metrics(s, label)
    boots = bootstrap(group, lambda i: full_metrics(s[i], label[i]), n_boot, seed)
    res: dict[str, Any] = {k: {"value": point[k], "ci95": ci(boots, k)} for k in KEYS}
    res["n"] = point["n"]
    if ref is not None:
        def diff(i: torch.Tensor) -> dict[str, float]:
            a, b = full_metrics(s[i], label[i]), full_metrics(ref[i], label[i])
            return {k: a[k] - b[k] for k in KEYS}
        d = diff(torch.arange(len(label)))
        db = bootstrap(group, diff, n_boot, seed)
        res["diff"] = {k: {"value": d[k], "ci95": ci(db, k)} for k in KEYS}
    return res


def pct(m: dict[str, Any]) -> str:
    v, (lo, hi) = m["value"], m["ci95"]
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def dpct(m: dict[str, Any]) -> str:
    v, (lo, hi) = m["value"], m["ci95"]
    return f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" + ("" if lo <= 0 <= hi else " *")


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco128-train2017 folder")
    ap.add_argument("--out", type=Path, default=Path("runs/tiny_llava_pope_fair"))
    ap.add_argument("--model", default="tiny-llava", help="'tiny-llava' or a saved PooledLlavaForConditionalGeneration")
    ap.add_argument("--layers", type=int, nargs="+", default=[10, 15, 20], help="candidate steering layers L*")
    ap.add_argument("--positions", nargs="+", default=["last_prompt", "last_prompt_no_gen"])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0], help="candidate L2S alphas")
    ap.add_argument("--input-offsets", type=int, nargs="+", default=[-5, 5], help="L' - L* candidates besides 0")
    ap.add_argument("--gates", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--mixes", nargs="+", default=["balanced", "kinds"])
    ap.add_argument("--mean-alphas", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--ba-alphas", type=float, nargs="+", default=[-4.0, -1.0, 1.0, 4.0])
    ap.add_argument("--ba-fit", type=int, default=128, help="fit questions for Mean-S(BA)'s fixed-pair mean")
    ap.add_argument("--curve", type=int, nargs="+", default=[64, 128, 256], help="learning-curve sizes (plus all)")
    ap.add_argument("--val-images", type=int, default=16)
    ap.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--max-test-images", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--reduction", default="completion_mean", choices=["completion_mean", "sampled_mean"])
    ap.add_argument("--continuation-tokens", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    from steerlib.zoo import load_steerable
    from steerlib.zoo.tiny_llava import projector_resource

    names, all_images = load_coco128(args.data)
    split = json.loads(projector_resource().with_name("projector.json").read_text())["split"]
    by_id = {im.id: im for im in all_images}
    test = [by_id[i] for i in split["held_out_ids"]][: args.max_test_images]
    pool = [by_id[i] for i in split["train_ids"]][: args.max_train_images]
    val_ids = set(random.Random(VAL_SEED).sample([im.id for im in pool], min(args.val_images, len(pool) - 1)))
    val = [im for im in pool if im.id in val_ids]
    fit = [im for im in pool if im.id not in val_ids]

    if args.model == "tiny-llava":
        sm = load_steerable(args.model)
    else:
        from transformers import LlavaProcessor

        from steerlib.zoo.tiny_llava import PooledLlavaForConditionalGeneration

        sm = SteerableModel(PooledLlavaForConditionalGeneration.from_pretrained(args.model).eval(),
                            LlavaProcessor.from_pretrained(args.model))
    memoize_vision_tower(sm.model)
    tok = sm.tokenizer
    yes, no = (tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0])
    nl = sm.num_layers
    layers = sorted({min(max(l, 0), nl - 1) for l in args.layers})
    src_of = lambda l: sorted({min(max(l + o, 0), nl - 1) for o in [0, *args.input_offsets]})  # noqa: E731
    src_layers = sorted({s for l in layers for s in src_of(l)})
    log: dict[str, Any] = {"protocol": {"val_seed": VAL_SEED, "val_ids": sorted(val_ids), "fit_images": len(fit),
                                        "test_images": len(test), "reduction": args.reduction,
                                        "l2s_settings": {**PAPER_L2S, "epochs": args.epochs}}}

    # ---------------- validation: fit on the fit images, score on the validation images ----------------
    t0 = time.perf_counter()
    fit_pairs = {m: training_pairs(fit, pool, len(names), m, args.seed) for m in args.mixes}
    all_fit_items = {m: items_of(p, names, f"fit-{m}") for m, p in fit_pairs.items()}
    # one extraction for the union of the mixes' questions
    uniq: dict[str, Any] = {}
    for its in all_fit_items.values():
        for it in its:
            uniq.setdefault(it.id.split("-", 2)[2], it)
    keys = list(uniq)
    feats_all = Features(sm, [uniq[k] for k in keys], layers, src_layers, args.positions, args)
    kpos = {k: i for i, k in enumerate(keys)}
    fit_feats = {m: feats_all.subset([kpos[it.id.split("-", 2)[2]] for it in its]) for m, its in all_fit_items.items()}
    ev_val = split_set(val, pool, names, args.seed, "val")
    log["n_fit_questions"] = {m: len(v) for m, v in all_fit_items.items()}
    log["n_val_questions"] = len(ev_val["items"])
    val_log: list[dict[str, Any]] = []

    def val_score(name: str, cfg: dict[str, Any], steer: Any) -> float:
        s = score(sm, ev_val, steer, yes, no, args, desc=f"val {name}")
        a = split_acc(ev_val, s)
        val_log.append({"method": name, **cfg, "val_acc": a, "val_yes_ratio": float((s > 0).float().mean())})
        print(f"val {name} {cfg}: {100 * a:.1f}", flush=True)
        return a

    base_val = val_score("No-steer", {}, None)
    mix0 = args.mixes[0]
    best: tuple[float, dict[str, Any]] | None = None

    def try_l2s(cfg: dict[str, Any]) -> None:
        nonlocal best
        l2s = fit_l2s(sm, fit_feats[cfg["mix"]], cfg, args)
        a = val_score("L2S", cfg, lambda chunk, batch: l2s.intervention(sm, chunk, batch))
        if best is None or a > best[0] + 1e-9:
            best = (a, dict(cfg))

    for l in layers:  # stage 1: layer x position x alpha, L' = L*
        for p in args.positions:
            for a in args.alphas:
                try_l2s({"layer": l, "input_layer": l, "position": p, "alpha": a, "gate": 0.0, "mix": mix0})
    assert best is not None
    for src in src_of(best[1]["layer"]):  # stage 2: g's input layer
        if src != best[1]["layer"]:
            try_l2s({**best[1], "input_layer": src})
    for g in args.gates:  # stage 3: gate
        if g != best[1]["gate"]:
            try_l2s({**best[1], "gate": g})
    for m in args.mixes:  # stage 4: training mix
        if m != best[1]["mix"]:
            try_l2s({**best[1], "mix": m})
    chosen = best[1]
    L = chosen["layer"]
    # baselines at the chosen layer
    fz = fit_feats[mix0]
    mean_vec = fz.z[L].mean(0)
    mean_best = max(args.mean_alphas, key=lambda a: (val_score("Mean-S", {"layer": L, "alpha": a},
                                                                static(L, mean_vec, a)), -abs(a)))
    ba_items = random.Random(args.seed).sample(fz.items, min(args.ba_fit, len(fz.items)))
    ba_kw = dict(positive="No, the image", negative="Yes, the image", prompt_suffix="")
    ba = MeanSteerBA(L, progress=False, batch_size=args.batch_size, **ba_kw).fit(sm, ba_items)
    ba_best = max(args.ba_alphas, key=lambda a: (val_score("Mean-S(BA)", {"layer": L, "alpha": a},
                                                            static(L, ba.vector_, a)), -abs(a)))
    t_val = time.perf_counter() - t0
    log["validation"] = {"no_steer_val_acc": base_val, "runs": val_log, "chosen_l2s": chosen,
                         "chosen_mean_alpha": mean_best, "chosen_ba_alpha": ba_best, "seconds": round(t_val, 1)}

    # ---------------- final: refit on all 94 images, score the test images ----------------
    t0 = time.perf_counter()
    final_pairs = training_pairs(pool, pool, len(names), chosen["mix"], args.seed)
    final_items = items_of(final_pairs, names, "train")
    need_src = sorted({chosen["input_layer"]})
    ff = Features(sm, final_items, [L], need_src, [chosen["position"]], args)
    l2s = fit_l2s(sm, ff, chosen, args)
    if chosen["mix"] == mix0:
        mean_final = ff.z[L].mean(0)
    else:  # Mean-S uses the balanced mix it was selected with
        mp = items_of(training_pairs(pool, pool, len(names), mix0, args.seed), names, "train")
        mean_final = extract_p2s_layers(sm, mp, [L], reduction=args.reduction, batch_size=args.batch_size,
                                        continuation_tokens=args.continuation_tokens, seed=args.seed,
                                        progress=False)[L].z.mean(0)
    ba_final = MeanSteerBA(L, progress=False, batch_size=args.batch_size, **ba_kw).fit(
        sm, random.Random(args.seed).sample(final_items, min(args.ba_fit, len(final_items))))
    ev = split_set(test, pool, names, args.seed, "test")
    tf = Features(sm, ev["items"], [L], need_src, [chosen["position"]], args)
    z_test = tf.z[L]
    methods = {
        "No-steer": None,
        f"Mean-S (alpha {mean_best:g})": static(L, mean_final, mean_best),
        f"Mean-S(BA) (alpha {ba_best:g})": static(L, ba_final.vector_, ba_best),
        "Norm-Rnd (alpha 1)": per_item(L, norm_random(z_test, ev["items"], args.seed), ev["items"], 1.0),
        f"L2S (alpha {chosen['alpha']:g})": lambda chunk, batch: l2s.intervention(sm, chunk, batch),
        "P2S (oracle, alpha 1)": per_item(L, z_test, ev["items"], 1.0),
    }
    scores = {m: score(sm, ev, st, yes, no, args, desc=m) for m, st in methods.items()}
    base = scores["No-steer"]
    table = {s: {m: summary(sc[r], ev["label"][r], ev["group"][r], args.n_boot, args.seed,
                            None if m == "No-steer" else base[r])
                 for m, sc in scores.items()} for s, r in ev["rows"].items()}
    # diagnostics: g(h) against the test questions' own P2S vectors
    with torch.no_grad():
        pred = l2s.predict(tf.h[(chosen["input_layer"], chosen["position"])])
    cos = torch.nn.functional.cosine_similarity(pred, z_test, dim=-1)
    lab = ev["label"]
    diag = {"cos_g_vs_p2s_mean": float(cos.mean()), "cos_g_vs_p2s_yes": float(cos[lab == 1].mean()),
            "cos_g_vs_p2s_no": float(cos[lab == 0].mean()),
            "frac_cos_positive": float((cos > 0).float().mean()),
            "norm_g_mean": float(pred.norm(dim=-1).mean()), "norm_p2s_mean": float(z_test.norm(dim=-1).mean()),
            "unsteered_right": float(((base > 0).long() == lab).float().mean()),
            "l2s_flips_right_to_wrong": float((((base > 0).long() == lab) & ((scores[list(methods)[4]] > 0).long() != lab)).float().mean()),
            "l2s_flips_wrong_to_right": float((((base > 0).long() != lab) & ((scores[list(methods)[4]] > 0).long() == lab)).float().mean()),
            "mean_s_norm": float(mean_final.norm()), "ba_norm": float(ba_final.vector_.norm())}
    t_test = time.perf_counter() - t0

    # ---------------- learning curve: nested balanced subsets of the 94-image questions ----------------
    t0 = time.perf_counter()
    yes_i = [i for i, it in enumerate(final_items) if it.behavior == "yes"]
    no_i = [i for i, it in enumerate(final_items) if it.behavior == "no"]
    rng = random.Random(args.seed)
    rng.shuffle(yes_i)
    rng.shuffle(no_i)
    curve = []
    sizes = sorted({n for n in args.curve if n < len(final_items)})
    for n in sizes:
        idx = sorted(yes_i[: n // 2] + no_i[: n - n // 2])
        g_n = fit_l2s(sm, ff.subset(idx), chosen, args)
        sc = score(sm, ev, lambda chunk, batch, g_n=g_n: g_n.intervention(sm, chunk, batch), yes, no, args,
                   desc=f"curve {n}")
        curve.append({"n": n, **{s: summary(sc[r], ev["label"][r], ev["group"][r], args.n_boot, args.seed, base[r])
                                 for s, r in ev["rows"].items()}})
    curve.append({"n": len(final_items), **table_l2s(table, list(methods)[4])})
    t_curve = time.perf_counter() - t0

    results = {**log, "test": table, "diagnostics": diag, "learning_curve": curve,
               "n_train_questions_final": len(final_items), "n_test_questions": len(ev["items"]),
               "seconds": {"validation": round(t_val, 1), "test": round(t_test, 1), "curve": round(t_curve, 1),
                           "total": round(time.perf_counter() - t_start, 1)}}
    lines = [f"## Held-out test images ({len(test)}), steering at layer {L}; 95 % image-bootstrap intervals", "",
             "F1(code) = 2·Acc/(1+Acc), the paper code's quantity; F1 = standard, 'yes' positive. `*`: paired "
             "interval of the difference excludes 0.", "",
             "| split | method | acc | F1 | F1(code) | yes-ratio | Δ acc vs No-steer | Δ yes-ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for s, rs in table.items():
        for m, r in rs.items():
            d = r.get("diff")
            lines.append(f"| {s} | {m} | {pct(r['acc'])} | {pct(r['f1'])} | {pct(r['f1_code'])} | "
                         f"{pct(r['yes_ratio'])} | {dpct(d['acc']) if d else ''} | {dpct(d['yes_ratio']) if d else ''} |")
    lines += ["", "## Learning curve: L2S Δ acc vs No-steer on the test images", "",
              "| training questions | random | popular | adversarial |", "|---|---|---|---|"]
    for c in curve:
        lines.append(f"| {c['n']} | " + " | ".join(dpct(c[s]["diff"]["acc"]) for s in SPLITS) + " |")
    lines += ["", f"Validation choice: L2S {chosen}; Mean-S alpha {mean_best:g}; Mean-S(BA) alpha {ba_best:g}; "
              f"No-steer validation accuracy {100 * base_val:.1f}.", "",
              "Diagnostics: " + ", ".join(f"{k} {v:.3f}" for k, v in diag.items())]
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report.md").write_text(report + "\n")
    print(f"wrote {args.out / 'results.json'} ({results['seconds']['total']:.0f} s)")
    return 0


def table_l2s(table: dict[str, Any], name: str) -> dict[str, Any]:
    return {s: rs[name] for s, rs in table.items()}


if __name__ == "__main__":
    raise SystemExit(main())
