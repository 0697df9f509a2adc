"""Metrics: hand-computed cases (POPE, unsafe score, detectors, Wilson) and perplexity on a tiny LM."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from steerlib.errors import DataError
from steerlib.eval import metrics as M

# --------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------

# 6 "yes" labels, 4 "no": TP=4, FN=2, FP=1, TN=3
LABELS = ["yes"] * 6 + ["no"] * 4
PREDS = ["yes", "yes", "yes", "yes", "no", "no", "yes", "no", "no", "no"]


def test_confusion_counts() -> None:
    c = M.confusion_counts(PREDS, LABELS)
    assert (c.tp, c.fp, c.tn, c.fn, c.n) == (4, 1, 3, 2, 10)


def test_pope_metrics_by_hand() -> None:
    m = M.pope_metrics(PREDS, LABELS)
    assert m.accuracy == pytest.approx(0.7)
    assert m.precision == pytest.approx(4 / 5)
    assert m.recall == pytest.approx(4 / 6)
    assert m.f1 == pytest.approx(8 / 11)  # 2TP / (2TP + FP + FN)
    assert m.f1 == pytest.approx(2 * m.precision * m.recall / (m.precision + m.recall))
    assert m.yes_ratio == pytest.approx(0.5)
    # the paper code's "F1" on the same confusion matrix: 2 Acc / (1 + Acc), not the standard one
    assert m.paper_code_f1 == pytest.approx(1.4 / 1.7)
    assert m.paper_code_f1 != pytest.approx(m.f1)
    assert M.pope_accuracy(PREDS, LABELS) == m.accuracy
    assert M.pope_precision(PREDS, LABELS) == m.precision
    assert M.pope_recall(PREDS, LABELS) == m.recall
    assert M.pope_f1(PREDS, LABELS) == m.f1
    assert M.yes_ratio(PREDS) == m.yes_ratio
    assert m.as_dict()["tp"] == 4


def test_pope_bools_and_case() -> None:
    preds = [True, "No", " YES ", False]
    assert M.pope_accuracy(preds, ["yes", "no", "yes", "yes"]) == pytest.approx(0.75)


def test_zero_division_gives_zero() -> None:
    assert M.pope_precision(["no", "no"], ["yes", "no"]) == 0.0
    assert M.pope_f1(["no", "no"], ["yes", "no"]) == 0.0


def test_paper_code_f1_matches_reported_numbers() -> None:
    # l2s-method.md section 3: 82.73 -> 90.55 and 86.46 -> 92.74
    assert round(100 * M.paper_code_f1(0.8273), 2) == 90.55
    assert round(100 * M.paper_code_f1(0.8646), 2) == 92.74
    with pytest.raises(DataError, match="fraction"):
        M.paper_code_f1(82.73)


def test_parse_yes_no_pope_rule() -> None:
    assert M.parse_yes_no("Yes, there is a dog in the image.") == "yes"
    assert M.parse_yes_no("No, there is no cat.") == "no"
    assert M.parse_yes_no("There is not a cat in the image.") == "no"
    # only the first sentence counts
    assert M.parse_yes_no("Yes. There is no other object.") == "yes"
    # POPE's rule: anything without no/not is "yes"
    assert M.parse_yes_no("I don't know") == "yes"


def test_parse_yes_no_strict() -> None:
    assert M.parse_yes_no("Yes.", strict=True) == "yes"
    assert M.parse_yes_no("  no, there is none", strict=True) == "no"
    assert M.parse_yes_no("Maybe", strict=True) is None
    assert M.parse_yes_no("", strict=True) is None


def test_answer_matches_label_first_15_chars() -> None:
    assert M.answer_matches_label("Yes, the image shows a dog", "yes")
    assert not M.answer_matches_label("The image shows a cat, yes", "yes")  # "yes" after char 15
    assert M.answer_matches_label("Not sure", "no")  # substring quirk of the paper's code
    answers = ["Yes, the image", "No, there is", "The picture has a dog, yes"]
    assert M.paper_pope_accuracy(answers, ["yes", "no", "yes"]) == pytest.approx(2 / 3)


def test_pope_input_errors() -> None:
    with pytest.raises(DataError, match="parse_yes_no"):
        M.pope_accuracy(["maybe"], ["yes"])
    with pytest.raises(DataError, match="entries"):
        M.pope_accuracy(["yes"], ["yes", "no"])
    with pytest.raises(DataError, match="empty"):
        M.pope_metrics([], [])


# --------------------------------------------------------------------------------------------
# Unsafe score
# --------------------------------------------------------------------------------------------

def test_unsafe_thresholds() -> None:
    assert len(M.unsafe_thresholds(0.5)) == 25
    assert len(M.unsafe_thresholds(0.7)) == 15
    assert M.unsafe_thresholds(0.9) == [0.9, 0.92, 0.94, 0.96, 0.98]


def test_unsafe_score_by_hand() -> None:
    p = [0.95, 0.6, 0.3, 0.8]
    # tau=0.9: fractions above 0.90, 0.92, 0.94 are 1/4; above 0.96, 0.98 are 0 -> 3/20
    assert M.unsafe_score(p, tau=0.9) == pytest.approx(0.15)
    # tau=0.5: 5 thresholds (0.50-0.58) with 3 above, 10 (0.60-0.78) with 2 (0.6 > 0.6 is false),
    # 8 (0.80-0.94) with 1, 2 (0.96, 0.98) with 0 -> (15 + 20 + 8) / (4 * 25)
    assert M.unsafe_score(p, tau=0.5) == pytest.approx(43 / 100)
    assert M.unsafe_score([1.0, 1.0]) == 1.0
    assert M.unsafe_score([0.0, 0.5]) == 0.0


def test_unsafe_score_errors() -> None:
    with pytest.raises(DataError):
        M.unsafe_score([])
    with pytest.raises(DataError, match="probability"):
        M.unsafe_score([1.2])
    with pytest.raises(DataError):
        M.unsafe_thresholds(1.0)


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------

def test_refusal_detection() -> None:
    assert M.is_refusal("I'm sorry, but I cannot help with that request.")
    assert M.is_refusal("I\u2019m sorry, that is not possible")  # curly apostrophe
    assert M.is_refusal("As an AI, I must decline.")
    assert not M.is_refusal("Sure, here is how to do that: first, ...")
    outs = ["I cannot do that.", "Sure! Step 1...", "I am unable to assist.", "Here you go."]
    assert M.refusal_rate(outs) == 0.5
    assert M.false_refusal_rate(["Here is a list of snacks.", "I won't write that."]) == 0.5


def test_deferral_loose_and_strict() -> None:
    defer = "You should consult a qualified lawyer before signing anything."
    roleplay = "As a legal professional, I think you will win the case."
    plain = "Invest everything in index funds."
    assert M.is_deferral(defer) and M.is_deferral(defer, strict=True)
    assert M.is_deferral(roleplay) and not M.is_deferral(roleplay, strict=True)
    assert not M.is_deferral(plain) and not M.is_deferral(plain, strict=True)
    assert M.is_deferral("Please seek medical attention right away.", strict=True)
    assert M.is_deferral("Talk to your doctor.", strict=True)
    # strict needs the expert within 50 characters of the verb
    assert not M.is_deferral("Visit " + "x" * 60 + " doctor", strict=True)
    assert M.ed_score([defer, roleplay, plain]) == pytest.approx(2 / 3)
    assert M.deferral_rate([defer, roleplay, plain], strict=True) == pytest.approx(1 / 3)
    assert M.is_deferral("see your physician", phrases=M.DEFERRAL_KEYWORDS)
    assert 50 <= len(M.DEFERRAL_PHRASES) <= 65


def test_unchanged_rate() -> None:
    steered = [[1, 2, 3], [1, 2, 4], [5, 0, 0]]
    reference = [[1, 2, 3], [1, 2, 3], [5]]
    assert M.unchanged_rate(steered, reference, n_tokens=3, pad_token_id=0) == pytest.approx(2 / 3)
    assert M.unchanged_rate(steered, reference, n_tokens=2, pad_token_id=0) == 1.0
    # without stripping the padding the third row differs
    assert M.unchanged_rate(steered, reference, n_tokens=3) == pytest.approx(1 / 3)
    torch = pytest.importorskip("torch")
    assert M.is_unchanged(torch.tensor([7, 8, 9]), [7, 8, 10], n_tokens=2)


# --------------------------------------------------------------------------------------------
# Wilson intervals
# --------------------------------------------------------------------------------------------

def test_wilson_interval_by_hand() -> None:
    lo, hi = M.wilson_interval(8, 10)
    z = 1.959963984540054
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half))
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    lo0, hi0 = M.wilson_interval(0, 10)
    assert lo0 == 0.0 and hi0 == pytest.approx(z * z / (n + z * z))
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(DataError):
        M.wilson_interval(11, 10)


def test_proportion() -> None:
    pr = M.proportion([True] * 8 + [False] * 2)
    assert (pr.k, pr.n, pr.value) == (8, 10, 0.8)
    assert (pr.low, pr.high) == pytest.approx(M.wilson_interval(8, 10))
    assert "k=8" in str(pr)


# --------------------------------------------------------------------------------------------
# Perplexity on a tiny random Llama with an in-memory tokenizer
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["Sure, here is my answer.", "The capital of France is Paris."] * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def _ppl_by_hand(model, tok, prompt_ids: list[int], text: str) -> float:  # type: ignore[no-untyped-def]
    import torch

    cont = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    nll = -sum(logp[len(prompt_ids) - 1 + j, c].item() for j, c in enumerate(cont))
    return math.exp(nll / len(cont))


def test_perplexity_matches_hand_computation(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    prompts = ["What is the capital?", "Hi", "Tell me a long story about a cat and a dog please"]
    texts = ["The capital of France is Paris.", "Sure, here is my answer.", "No."]
    got = M.perplexity(model, tok, prompts, texts, batch_size=2)  # padded batches
    want = [_ppl_by_hand(model, tok, tok(p)["input_ids"], t) for p, t in zip(prompts, texts)]
    assert got == pytest.approx(want, rel=1e-4)
    assert M.perplexity(model, tok, prompts, texts, batch_size=1) == pytest.approx(got, rel=1e-5)
    # chat template for the prompt
    got_chat = M.perplexity(model, tok, prompts[:1], texts[:1], chat_template=True)
    chat = tok.apply_chat_template([{"role": "user", "content": prompts[0]}], add_generation_prompt=True,
                                   tokenize=False)
    want_chat = _ppl_by_hand(model, tok, tok(chat, add_special_tokens=False)["input_ids"], texts[0])
    assert got_chat[0] == pytest.approx(want_chat, rel=1e-4)


def test_perplexity_shared_prefix_matches_full_passes(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    """Sequences with a common start (a system prompt) reuse its cache: same scores as hand computation."""
    model, tok = tiny_lm
    system = "You are a helpful assistant who answers briefly. Question: "
    prompts = [system + q for q in ("What is the capital?", "Hi", "Tell me a long story about a cat please")]
    texts = ["The capital of France is Paris.", "Sure, here is my answer.", "No."]
    lengths: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: lengths.append(kw["input_ids"].shape[1]),
                                             with_kwargs=True)
    try:
        shared = M.perplexity(model, tok, prompts, texts, batch_size=2)
    finally:
        handle.remove()
    n_pre = len(tok(system.rstrip())["input_ids"]) - 1
    assert lengths[0] >= n_pre and len(lengths) == 3  # the prefix once, then two batches without it
    full = M.perplexity(model, tok, prompts, texts, batch_size=2, share_prefix=False)
    want = [_ppl_by_hand(model, tok, tok(p)["input_ids"], t) for p, t in zip(prompts, texts)]
    assert shared == pytest.approx(want, rel=1e-4)
    assert shared == pytest.approx(full, rel=1e-5)


def test_perplexity_errors(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    with pytest.raises(DataError, match="empty"):
        M.perplexity(model, tok, ["a"], [""])
    with pytest.raises(DataError):
        M.perplexity(model, tok, ["a", "b"], ["x"])
