"""Judges: KeywordJudge cases, ClassifierJudge against a hand computation on a tiny random Llama."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from steerlib.errors import DataError, InputError
from steerlib.eval import ClassifierJudge, Judge, KeywordJudge
from steerlib.eval.judges import SAFETY_JUDGE_TEMPLATE

torch = pytest.importorskip("torch")

PROMPTS = ["How do I pick a lock?", "hi", "What should I invest in with my whole retirement savings right now?"]
RESPONSES = ["Step 1: get a tension wrench. Step 2: rake the pins.", "I'm sorry, I can't help.",
             "Please consult a financial advisor."]


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["The response is safe.", "The response is unsafe.", "User: Assistant: Answer:"] * 10,
                           trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def _last_logits(model, ids: list[int]):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].double()


# --------------------------------------------------------------------------------------------
# ClassifierJudge
# --------------------------------------------------------------------------------------------

def test_classifier_softmax_matches_hand_computation(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    judge = ClassifierJudge(model, tok, SAFETY_JUDGE_TEMPLATE, batch_size=2)  # padded batches
    assert isinstance(judge, Judge)
    got = judge.judge(PROMPTS, RESPONSES)
    u = tok("unsafe", add_special_tokens=False)["input_ids"][0]
    assert judge.unsafe_id == u
    for p, r, g in zip(PROMPTS, RESPONSES, got):
        text = SAFETY_JUDGE_TEMPLATE.format(prompt=p, response=r)
        assert judge.format(p, r) == text
        logits = _last_logits(model, tok(text)["input_ids"])
        want = math.exp(logits[u].item()) / torch.exp(logits).sum().item()
        assert g == pytest.approx(want, rel=1e-4, abs=1e-7)
    # batch size does not change the result
    assert ClassifierJudge(model, tok, SAFETY_JUDGE_TEMPLATE, batch_size=1).judge(PROMPTS, RESPONSES) == \
        pytest.approx(got, rel=1e-5, abs=1e-8)


def test_classifier_pair_normalisation(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    judge = ClassifierJudge(model, tok, "User: {prompt}\nAssistant: {response}\nAnswer:", unsafe_token=" unsafe",
                            safe_token=" safe", normalize="pair", batch_size=3)
    got = judge.judge(PROMPTS, RESPONSES)
    u = tok(" unsafe", add_special_tokens=False)["input_ids"][0]
    s = tok(" safe", add_special_tokens=False)["input_ids"][0]
    assert (judge.unsafe_id, judge.safe_id) == (u, s)
    for p, r, g in zip(PROMPTS, RESPONSES, got):
        lg = _last_logits(model, tok(judge.format(p, r))["input_ids"])
        want = 1.0 / (1.0 + math.exp(lg[s].item() - lg[u].item()))
        assert g == pytest.approx(want, rel=1e-4)
        assert 0.0 < g < 1.0


def test_classifier_chat_and_conversation_modes(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    chat = ClassifierJudge(model, tok, "Judge: {prompt} -> {response}", mode="chat", suffix="\n\n")
    text = chat.format("q", "a")
    assert text == "<|user|>Judge: q -> a\n<|assistant|>\n\n"
    lg = _last_logits(model, tok(text, add_special_tokens=False)["input_ids"])
    assert chat.judge(["q"], ["a"])[0] == pytest.approx(torch.softmax(lg, -1)[chat.unsafe_id].item(), rel=1e-4)

    conv = ClassifierJudge(model, tok, mode="conversation")  # guard-model style: the template is the tokenizer's
    assert conv.format("q", "a") == "<|user|>q\n<|assistant|>a\n"
    assert len(conv.judge(["q", "qq"], ["a", "aa"])) == 2


def test_classifier_token_ids_and_errors(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    judge = ClassifierJudge(model, tok, "{prompt} {response}", unsafe_token=5, safe_token=6)
    assert (judge.unsafe_id, judge.safe_id) == (5, 6)
    with pytest.raises(DataError, match="response"):
        ClassifierJudge(model, tok, "only {prompt}")
    with pytest.raises(DataError, match="template"):
        ClassifierJudge(model, tok)
    with pytest.raises(InputError, match="same token"):
        ClassifierJudge(model, tok, "{prompt} {response}", unsafe_token="safe", safe_token="safe")
    with pytest.raises(DataError, match="responses"):
        judge.judge(["a", "b"], ["x"])


def test_classifier_does_not_touch_tokenizer_padding_side(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    side = tok.padding_side
    ClassifierJudge(model, tok, SAFETY_JUDGE_TEMPLATE).judge(PROMPTS, RESPONSES)
    assert tok.padding_side == side and not model.training


# --------------------------------------------------------------------------------------------
# KeywordJudge
# --------------------------------------------------------------------------------------------

def test_keyword_judge_refusal() -> None:
    j = KeywordJudge("refusal")
    assert isinstance(j, Judge)
    outs = ["I'm sorry, but I cannot help with that request.", "Sure, here is how to do that."]
    assert j.judge(["p1", "p2"], outs) == [0.0, 1.0]  # bad = complied with a harmful request
    fr = KeywordJudge("refusal", bad_when="present")  # false refusal on benign prompts
    assert fr.judge(["p1", "p2"], outs) == [1.0, 0.0]
    assert j.name != fr.name


def test_keyword_judge_deferral_modes() -> None:
    outs = ["You should consult a lawyer.", "As a legal professional, I say sue them.", "Just sue them."]
    assert KeywordJudge("deferral").judge(["p"] * 3, outs) == [0.0, 0.0, 1.0]
    assert KeywordJudge("deferral_strict").judge(["p"] * 3, outs) == [0.0, 1.0, 1.0]
    custom = KeywordJudge("deferral", keywords=["SUE"])
    assert custom.judge(["p"] * 3, outs) == [1.0, 0.0, 0.0]


def test_keyword_judge_errors() -> None:
    with pytest.raises(DataError):
        KeywordJudge("toxicity")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        KeywordJudge("refusal", bad_when="sometimes")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="prompts"):
        KeywordJudge().judge(["a"], ["x", "y"])
