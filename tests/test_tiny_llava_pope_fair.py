"""examples/tiny_llava/pope_fair.py (issue 23's fair protocol) end to end at tiny size on a tiny random pooled LLaVA:
the validation selection, the final held-out table and the learning curve are produced and well formed."""

from __future__ import annotations

import importlib.util as iu
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers as tf

from steerlib.testing.tiny_tokenizer import make_tokenizer
from steerlib.zoo.tiny_llava import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    PooledLlavaForConditionalGeneration,
    build_processor,
    projector_resource,
    tiny_llava_config,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train2017"
EX_DIR = Path(__file__).resolve().parents[1] / "examples" / "tiny_llava"


def _tiny_model(folder: Path) -> None:
    tok = make_tokenizer(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
                         named_tokens={"image_token": IMAGE_TOKEN}, chat_template=CHAT_TEMPLATE)
    vision = tf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=4, image_size=64)
    text = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = PooledLlavaForConditionalGeneration(tiny_llava_config(vision, text, tok.convert_tokens_to_ids(IMAGE_TOKEN)))
    model.eval().save_pretrained(folder)
    build_processor(tok, image_size=64).save_pretrained(folder)


def _load():
    spec = iu.spec_from_file_location("tiny_llava_pope_fair", EX_DIR / "pope_fair.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def mod():
    sys.path.insert(0, str(EX_DIR))
    before = torch.get_num_threads()
    try:
        yield _load()
    finally:
        sys.path.remove(str(EX_DIR))
        torch.set_num_threads(before)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/coco128-train2017")
def test_training_pairs_are_balanced_and_never_ask_a_present_class(mod):
    names, images = mod.load_coco128(SHARED)
    split = json.loads(projector_resource().with_name("projector.json").read_text())["split"]
    by = {im.id: im for im in images}
    pool = [by[i] for i in split["train_ids"]]
    bal = mod.training_pairs(pool, pool, len(names), "balanced", 0)
    n_yes = sum(lab == "yes" for _, _, lab in bal)
    assert n_yes == sum(len(im.classes) for im in pool) == len(bal) - n_yes  # every positive, one negative each
    for im, c, lab in bal + mod.training_pairs(pool, pool, len(names), "kinds", 0):
        assert (c in im.classes) == (lab == "yes")
    kinds = mod.training_pairs(pool, pool, len(names), "kinds", 0)
    assert sum(lab == "no" for _, _, lab in kinds) == 3 * n_yes
    assert len({(im.id, c) for im, c, _ in kinds}) == len(kinds)  # no question twice
    assert not set(split["held_out_ids"]) & {im.id for im, _, _ in bal}  # never a test image


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/coco128-train2017")
def test_pope_fair_runs_end_to_end_at_tiny_size(mod, tmp_path):
    _tiny_model(tmp_path / "m")
    mod.main(["--model", str(tmp_path / "m"), "--data", str(SHARED), "--max-train-images", "6", "--val-images", "2",
              "--max-test-images", "2", "--layers", "1", "--positions", "last_prompt", "--alphas", "1",
              "--input-offsets", "1", "--gates", "0", "--mixes", "balanced", "--mean-alphas", "1",
              "--ba-alphas", "1", "--ba-fit", "4", "--curve", "4", "--epochs", "2", "--n-boot", "20",
              "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["test"]) == {"random", "popular", "adversarial"}
    methods = list(res["test"]["random"])
    assert methods[0] == "No-steer" and len(methods) == 6
    assert {m.split(" ")[0] for m in methods} == {"No-steer", "Mean-S", "Mean-S(BA)", "Norm-Rnd", "L2S", "P2S"}
    r = res["test"]["random"][methods[4]]
    assert abs(r["f1_code"]["value"] - 2 * r["acc"]["value"] / (1 + r["acc"]["value"])) < 1e-9
    assert r["diff"]["acc"]["ci95"][0] <= r["diff"]["acc"]["value"] <= r["diff"]["acc"]["ci95"][1]
    assert not set(res["protocol"]["val_ids"]) & set(
        json.loads(projector_resource().with_name("projector.json").read_text())["split"]["held_out_ids"])
    assert [c["n"] for c in res["learning_curve"]] == [4, res["n_train_questions_final"]]
    assert res["validation"]["chosen_l2s"]["layer"] == 1
    assert len(res["validation"]["runs"]) == 1 + 2 + 1 + 1  # No-steer, L2S (L'=L*, L'=L*+1), Mean-S, Mean-S(BA)
