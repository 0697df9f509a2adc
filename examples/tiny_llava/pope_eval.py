"""POPE-style evaluation of the tiny LLaVA on the held-out COCO128 images, with intervals.

For each held-out image (the seeded split of ``train_projector.py``, read from ``projector.json``) every one of
the 80 classes is asked ("Is there a {name} in the image?"; COCO labels are exhaustive). A question counts as "yes"
when logit(Yes) > logit(No) at the first answer position, read from ``SteerableModel.forward``.

* Splits, defined on the exhaustive set: positives = the classes present; negatives = the same number of absent
  classes, drawn at random (seeded), the most frequent ones (popular), or the ones co-occurring most with the
  present classes (adversarial); frequencies and co-occurrences over the *training* images. Plus AUC over all 80.
* Mismatched-image control: the same questions with the images rolled by half the set.
* Steering: NoSteer, Mean-S, P2S (oracle) and L2S from ``steerlib.steerers``, fitted on questions about the
  *training* images only, with the paper's POPE completions "{Yes|No}, the image".
* 95 % intervals: percentile bootstrap over images (seeded); differences are paired (same resampled images).

    python examples/tiny_llava/pope_eval.py --out runs/tiny_llava_pope
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from PIL import Image
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, LabelledImage, class_stats, load_coco128, question

from steerlib import Intervention, SteerableModel
from steerlib.data.templates import apply_template, pope_template
from steerlib.steerers import L2S, P2S, MeanSteer
from steerlib.steerers.extract import extract_p2s

SPLITS = ("random", "popular", "adversarial")


# ------------------------------------------------------------------------------------------------
# Speed: the frozen vision tower sees the same image for all 80 questions; cache its output per image
# ------------------------------------------------------------------------------------------------

def memoize_vision_tower(model: torch.nn.Module) -> dict[str, int]:
    """Cache the vision tower's last hidden state per distinct image (exact: the tower is frozen and
    deterministic). Only ``hidden_states[-1]`` is kept, which is what ``vision_feature_layer=-1`` reads."""
    tower = model.model.vision_tower
    original = tower.forward
    store: dict[str, torch.Tensor] = {}
    runs = {"images": 0}

    def forward(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> BaseModelOutputWithPooling:
        keys = [hashlib.sha1(r.detach().cpu().float().numpy().tobytes()).hexdigest() for r in pixel_values]
        todo = [i for i, k in enumerate(keys) if k not in store and k not in keys[:i]]
        if todo:
            out = original(pixel_values[todo], output_hidden_states=True, return_dict=True)
            runs["images"] += len(todo)
            for j, i in enumerate(todo):
                store[keys[i]] = out.hidden_states[-1][j]
        hs = torch.stack([store[k] for k in keys])
        return BaseModelOutputWithPooling(last_hidden_state=hs, hidden_states=(hs,))

    tower.forward = forward
    return runs


# ------------------------------------------------------------------------------------------------
# Questions
# ------------------------------------------------------------------------------------------------

def exhaustive(images: list[LabelledImage], names: list[str]) -> list[dict[str, Any]]:
    return [{"image": k, "cls": c, "label": int(c in im.classes)} for k, im in enumerate(images) for c in range(len(names))]


def split_members(images: list[LabelledImage], train: list[LabelledImage], n_classes: int,
                  seed: int) -> dict[str, list[tuple[int, int]]]:
    """(image index, class) pairs per split: all positives plus as many negatives, chosen per split."""
    freq, co = class_stats(train)
    out: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    for k, im in enumerate(images):
        pos = sorted(im.classes)
        absent = [c for c in range(n_classes) if c not in im.classes]
        n = min(len(pos), len(absent))
        rng = random.Random(f"{seed}:{im.id}")
        neg = {
            "random": rng.sample(absent, n),
            "popular": sorted(absent, key=lambda c: (-freq[c], c))[:n],
            "adversarial": sorted(absent, key=lambda c: (-sum(co.get(p, {}).get(c, 0) for p in pos), -freq[c], c))[:n],
        }
        for s in SPLITS:
            out[s] += [(k, c) for c in pos] + [(k, c) for c in neg[s]]
    return out


def items_for(pairs: list[tuple[int, int]], images: list[LabelledImage], names: list[str]) -> list[Any]:
    return [apply_template(question(names[c]), pope_template("yes" if c in images[k].classes else "no"),
                           images=(images[k].path,), id=f"{images[k].id}-{c}") for k, c in pairs]


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------

def margins(sm: SteerableModel, prompts: list[str], paths: list[Path], yes: int, no: int, *, batch_size: int,
            steer: Any = None, items: list[Any] | None = None, desc: str = "score") -> torch.Tensor:
    """logit(Yes) - logit(No) at the last prompt position, one forward per batch (optionally steered).

    ``steer(items, batch) -> Intervention | None`` gives the intervention of a batch."""
    out = []
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False):
        batch = sm.encode(prompts[s:s + batch_size], [[p] for p in paths[s:s + batch_size]])
        batch.inputs["logits_to_keep"] = 1  # only the last position's logits are needed
        iv = steer(items[s:s + batch_size], batch) if steer is not None else None
        logits = sm.forward(batch, iv)[:, -1].float()
        out.append(logits[:, yes] - logits[:, no])
    return torch.cat(out)


@torch.no_grad()
def margins_shared_prefix(sm: SteerableModel, questions: list[str], paths: list[Path], yes: int,
                          no: int) -> torch.Tensor:
    """Unsteered logit(Yes) - logit(No) for every (image, question) pair, ``[len(paths), len(questions)]``.

    Same text and tokens as ``SteerableModel.encode``; the shared part of the prompt (system + user + image tokens)
    runs once per image, then all questions run against its KV cache. Checked against ``SteerableModel.forward``
    in ``main`` (``shared_prefix_check``)."""
    model, proc, tok = sm.model, sm.processor, sm.tokenizer
    image_id = model.config.image_token_index
    n_img = model.config.image_seq_length
    texts = [sm.adapter.render(proc, q, 1) for q in questions]
    ids = [tok(t.replace(proc.image_token, proc.image_token * n_img), add_special_tokens=False)["input_ids"]
           for t in texts]
    cut = max(i for i, t in enumerate(ids[0]) if t == image_id) + 1
    if any(x[:cut] != ids[0][:cut] for x in ids):
        raise RuntimeError("The questions do not share the prompt prefix up to the image tokens.")
    lens = torch.tensor([len(x) - cut for x in ids])
    sfx = torch.full((len(ids), int(lens.max())), tok.pad_token_id or 0, dtype=torch.long)
    for r, x in enumerate(ids):
        sfx[r, :len(x) - cut] = torch.tensor(x[cut:])
    lm = model.model.language_model
    prefix = torch.tensor([ids[0][:cut]])
    pos = torch.arange(cut, cut + sfx.shape[1])[None].expand(len(ids), -1)
    mask = torch.ones(len(ids), cut + sfx.shape[1], dtype=torch.long)
    sfx_emb = lm.get_input_embeddings()(sfx)
    out = torch.empty(len(paths), len(ids))
    for k, path in enumerate(tqdm(paths, desc="all-80 (shared prefix)", unit="image", leave=False)):
        pix = proc.image_processor([Image.open(path)], return_tensors="pt")["pixel_values"]
        feats = torch.cat(list(model.model.get_image_features(pixel_values=pix).pooler_output))
        emb = lm.get_input_embeddings()(prefix).clone()
        emb[prefix == image_id] = feats.to(emb.dtype)
        cache = lm(inputs_embeds=emb, use_cache=True).cache  # transformers 5 name (was past_key_values)
        cache.batch_repeat_interleave(len(ids))
        h = lm(inputs_embeds=sfx_emb, cache=cache, position_ids=pos, attention_mask=mask).last_hidden_state
        logits = model.lm_head(h[torch.arange(len(ids)), lens - 1]).float()
        out[k] = logits[:, yes] - logits[:, no]
    return out


def auc(score: torch.Tensor, label: torch.Tensor) -> float:
    pos, neg = score[label == 1], score[label == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).float().mean()
    eq = (pos[:, None] == neg[None, :]).float().mean()
    return float(gt + 0.5 * eq)


def metrics(score: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    pred = (score > 0).long()
    tp = int(((pred == 1) & (label == 1)).sum())
    fp = int(((pred == 1) & (label == 0)).sum())
    fn = int(((pred == 0) & (label == 1)).sum())
    n = len(label)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"acc": float((pred == label).float().mean()), "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "yes_ratio": float(pred.float().mean()), "auc": auc(score, label), "n": n}


def bootstrap(groups: torch.Tensor, fn: Any, n_boot: int, seed: int) -> list[dict[str, float]]:
    """``fn(index tensor)`` on ``n_boot`` resamples of the images (with replacement), seeded."""
    g = torch.Generator().manual_seed(seed)
    ids = groups.unique()
    by = {int(i): (groups == i).nonzero().squeeze(-1) for i in ids}
    out = []
    for _ in range(n_boot):
        pick = ids[torch.randint(len(ids), (len(ids),), generator=g)]
        out.append(fn(torch.cat([by[int(i)] for i in pick])))
    return out


def ci(samples: list[dict[str, float]], key: str) -> tuple[float, float]:
    v = torch.tensor([s[key] for s in samples if s[key] == s[key]])
    return float(v.quantile(0.025)), float(v.quantile(0.975))


def summarise(score: torch.Tensor, label: torch.Tensor, groups: torch.Tensor, n_boot: int, seed: int,
              ref: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics with bootstrap 95 % intervals; with ``ref`` also the paired difference score-vs-ref."""
    point = metrics(score, label)
    boots = bootstrap(groups, lambda i: metrics(score[i], label[i]), n_boot, seed)
    res: dict[str, Any] = {k: {"value": point[k], "ci95": ci(boots, k)} for k in ("acc", "f1", "yes_ratio", "auc")}
    res["n"] = point["n"]
    if ref is not None:
        def diff(i: torch.Tensor) -> dict[str, float]:
            a, b = metrics(score[i], label[i]), metrics(ref[i], label[i])
            return {k: a[k] - b[k] for k in ("acc", "f1", "yes_ratio", "auc")}
        d = diff(torch.arange(len(label)))
        db = bootstrap(groups, diff, n_boot, seed)
        res["diff_vs_ref"] = {k: {"value": d[k], "ci95": ci(db, k)} for k in d}
    return res


def fmt(m: dict[str, Any], k: str, pct: bool = True) -> str:
    v, (lo, hi) = m[k]["value"], m[k]["ci95"]
    if pct:
        return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def fmt_diff(m: dict[str, Any], k: str = "acc") -> str:
    d = m["diff_vs_ref"][k]
    lo, hi = d["ci95"]
    flag = "" if lo <= 0 <= hi else " *"
    return f"{100 * d['value']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{flag}"


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco128-train2017 folder")
    ap.add_argument("--out", type=Path, default=Path("runs/tiny_llava_pope"), help="folder for results.json (+ plot)")
    ap.add_argument("--model", default="tiny-llava",
                    help="'tiny-llava' (default) or the folder of a saved PooledLlavaForConditionalGeneration")
    ap.add_argument("--split-json", type=Path, default=None,
                    help="projector.json holding the held-out ids (default: the shipped one)")
    ap.add_argument("--layer", type=int, default=15, help="steering layer L* (and L2S input layer)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--fit-images", type=int, default=32, help="training images whose questions fit the steerers")
    ap.add_argument("--fit-per-image", type=int, default=2, help="yes and no questions per training image")
    ap.add_argument("--max-images", type=int, default=None, help="evaluate only the first N held-out images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-steering", action="store_true")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    from steerlib.zoo import load_steerable
    from steerlib.zoo.tiny_llava import projector_resource

    names, all_images = load_coco128(args.data)
    split_json = args.split_json or projector_resource().with_name("projector.json")
    split = json.loads(split_json.read_text())["split"]
    by_id = {im.id: im for im in all_images}
    held = [by_id[i] for i in split["held_out_ids"]][: args.max_images]
    train = [by_id[i] for i in split["train_ids"]]

    if args.model == "tiny-llava":
        sm = load_steerable(args.model)
    else:  # a saved pooled checkpoint (e.g. a tiny random one for a smoke run)
        from transformers import LlavaProcessor

        from steerlib.zoo.tiny_llava import PooledLlavaForConditionalGeneration

        sm = SteerableModel(PooledLlavaForConditionalGeneration.from_pretrained(args.model).eval(),
                            LlavaProcessor.from_pretrained(args.model))
    tok = sm.tokenizer
    yes, no = (tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0])
    # self-check: the memoised tower gives the same margins as the plain model on a few questions
    check_prompts = [question(names[c]) for c in range(4)]
    check_paths = [held[0].path, held[0].path, held[-1].path, held[-1].path]
    plain = margins(sm, check_prompts, check_paths, yes, no, batch_size=4, desc="check")
    tower_runs = memoize_vision_tower(sm.model)
    memo_diff = float((margins(sm, check_prompts, check_paths, yes, no, batch_size=4, desc="check") - plain).abs().max())
    layer = min(args.layer, sm.num_layers - 1)

    # ---- exhaustive questions: matched and mismatched images ----
    qs = exhaustive(held, names)
    label = torch.tensor([q["label"] for q in qs])
    group = torch.tensor([q["image"] for q in qs])
    class_q = [question(n) for n in names]
    t0 = time.perf_counter()
    grid = margins_shared_prefix(sm, class_q, [im.path for im in held], yes, no)  # [image, class]
    t_match = time.perf_counter() - t0
    # check the shared-prefix path against SteerableModel.forward on a few questions
    chk = [(0, c) for c in range(min(6, len(names)))] + [(len(held) - 1, c) for c in range(min(6, len(names)))]
    via_engine = margins(sm, [class_q[c] for _, c in chk], [held[k].path for k, _ in chk], yes, no, batch_size=12,
                         desc="check")
    shared_diff = float((via_engine - torch.stack([grid[k, c] for k, c in chk])).abs().max())
    print(f"shared-prefix vs SteerableModel.forward: max |margin diff| = {shared_diff:.2e}", flush=True)
    s_match = torch.stack([grid[q["image"], q["cls"]] for q in qs])
    # mismatched image: the same question about image k is answered while looking at image k + shift
    shift = max(1, len(held) // 2)
    s_mis = torch.stack([grid[(q["image"] + shift) % len(held), q["cls"]] for q in qs])
    index = {(q["image"], q["cls"]): i for i, q in enumerate(qs)}
    members = split_members(held, train, len(names), args.seed)

    results: dict[str, Any] = {"n_held_out_images": len(held), "n_questions_all80": len(qs),
                               "held_out_ids": [im.id for im in held], "layer": layer, "alpha": args.alpha,
                               "seconds_matched_all80": round(t_match, 1),
                               "shared_prefix_check_max_abs_margin_diff": shared_diff, "mismatch_shift": shift, "splits": {}, "steering": {}}
    for name, rows in [("all80", list(range(len(qs))))] + [(s, [index[p] for p in members[s]]) for s in SPLITS]:
        r = torch.tensor(rows)
        results["splits"][name] = {
            "matched": summarise(s_match[r], label[r], group[r], args.n_boot, args.seed),
            "mismatched": summarise(s_mis[r], label[r], group[r], args.n_boot, args.seed, ref=s_match[r]),
        }

    # ---- steering on the union of the split questions ----
    if not args.no_steering:
        union = sorted({p for s in SPLITS for p in members[s]})
        items = items_for(union, held, names)
        u_label = torch.tensor([int(it.behavior == "yes") for it in items])
        u_group = torch.tensor([k for k, _ in union])
        u_prompts = [it.prompt for it in items]
        u_paths = [Path(it.images[0]) for it in items]
        rng = random.Random(args.seed)
        fit_imgs = rng.sample(train, min(args.fit_images, len(train)))
        fit_pairs = []
        train_names = names
        for im in fit_imgs:
            pos = sorted(im.classes)
            absent = [c for c in range(len(train_names)) if c not in im.classes]
            k = min(args.fit_per_image, len(pos), len(absent))
            fit_pairs += [(im, c, "yes") for c in rng.sample(pos, k)] + [(im, c, "no") for c in rng.sample(absent, k)]
        fit_items = [apply_template(question(train_names[c]), pope_template(lab), images=(im.path,), id=f"fit-{im.id}-{c}")
                     for im, c, lab in fit_pairs]
        t0 = time.perf_counter()
        feats = extract_p2s(sm, fit_items, layer, input_layer=layer, batch_size=args.batch_size, progress=True)
        mean = MeanSteer(layer, alpha=args.alpha, progress=False).fit_from_p2s(sm, fit_items, feats.z, feats.h)
        l2s = L2S(layer, alpha=args.alpha, hidden=64, epochs=100, lr=1e-3, seed=args.seed,
                  progress=False).fit_from_p2s(sm, fit_items, feats.z, feats.h)
        p2s = P2S(layer, alpha=args.alpha, batch_size=args.batch_size, progress=False).fit(sm, [])
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        z_eval = extract_p2s(sm, items, layer, batch_size=args.batch_size, progress=True).z
        t_p2s = time.perf_counter() - t0
        pos_of = {id(it): i for i, it in enumerate(items)}

        def p2s_steer(chunk: list[Any], batch: Any) -> Intervention:
            return Intervention.build(layer, z_eval[[pos_of[id(it)] for it in chunk]], alpha=args.alpha)

        methods = {
            "No-steer": None,
            "Mean-S": lambda chunk, batch: mean.intervention(sm, chunk, batch),
            "P2S (oracle)": p2s_steer,
            "L2S": lambda chunk, batch: l2s.intervention(sm, chunk, batch),
        }
        scores = {}
        for mname, steer in methods.items():
            scores[mname] = margins(sm, u_prompts, u_paths, yes, no, batch_size=args.batch_size, steer=steer,
                                    items=items, desc=mname)
        upos = {p: i for i, p in enumerate(union)}
        for s in SPLITS:
            r = torch.tensor([upos[p] for p in members[s]])
            results["steering"][s] = {m: summarise(sc[r], u_label[r], u_group[r], args.n_boot, args.seed,
                                                   ref=None if m == "No-steer" else scores["No-steer"][r])
                                      for m, sc in scores.items()}
        results.update(fit_items=len(fit_items), fit_images=len(fit_imgs), seconds_fit=round(t_fit, 1),
                       seconds_p2s_eval=round(t_p2s, 1), p2s_ignored=p2s.method,
                       mean_s_norm=float(mean.vector_.norm()), p2s_mean_norm=float(z_eval.norm(dim=-1).mean()))
    results["seconds_total"] = round(time.perf_counter() - t_start, 1)
    results["vision_memo"] = {"max_abs_margin_diff_vs_plain": memo_diff, "tower_image_runs": tower_runs["images"]}

    # ---- report ----
    lines = ["## POPE-style accuracy on the held-out images (95 % bootstrap intervals over images)", "",
             (f"{len(held)} held-out images x {len(names)} classes = {len(qs)} questions; "
              "acc / F1 / yes-ratio in %, AUC of logit(Yes) - logit(No)."), "",
             "| split | n | image | acc | F1 | yes-ratio | AUC | acc: mismatched - matched |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rs in results["splits"].items():
        for kind in ("matched", "mismatched"):
            m = rs[kind]
            lines.append(f"| {name} | {m['n']} | {kind} | {fmt(m, 'acc')} | {fmt(m, 'f1')} | {fmt(m, 'yes_ratio')} | "
                         f"{fmt(m, 'auc', False)} | {fmt_diff(m) if kind == 'mismatched' else ''} |")
    if results["steering"]:
        lines += ["", (f"## Steering at layer {layer}, alpha {args.alpha} (fitted on {results['fit_items']} questions "
                       f"about {results['fit_images']} training images)"), "",
                  "| split | method | acc | F1 | yes-ratio | acc - No-steer |", "|---|---|---|---|---|---|"]
        for s, rs in results["steering"].items():
            for m, r in rs.items():
                lines.append(f"| {s} | {m} | {fmt(r, 'acc')} | {fmt(r, 'f1')} | {fmt(r, 'yes_ratio')} | "
                             f"{fmt_diff(r) if 'diff_vs_ref' in r else ''} |")
        lines += ["", "`*`: the paired 95 % interval of the difference excludes 0."]
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report.md").write_text(report + "\n")
    try:
        _plot(results, args.out / "pope.png")
    except ImportError:
        pass
    print(f"wrote {args.out / 'results.json'} ({results['seconds_total']:.0f} s)")
    return 0


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(results["splits"])
    for j, kind in enumerate(("matched", "mismatched")):
        v = [100 * results["splits"][n][kind]["acc"]["value"] for n in names]
        lo = [100 * results["splits"][n][kind]["acc"]["ci95"][0] for n in names]
        hi = [100 * results["splits"][n][kind]["acc"]["ci95"][1] for n in names]
        x = [i + 0.38 * j for i in range(len(names))]
        ax.bar(x, v, width=0.36, label=f"{kind} image",
               yerr=[[a - b for a, b in zip(v, lo)], [b - a for a, b in zip(v, hi)]], capsize=3)
    ax.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("tiny LLaVA, held-out COCO128 images (95 % bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
