"""Prompts as chat messages (issue 15): a conversation ``[{"role", "content"}, ...]`` is rendered with
the tokenizer's own ``apply_chat_template`` in ``encode``/``read``/``generate`` and in fitted items;
anything that is neither a string nor a conversation nor an item is refused with what was given
(issue 21: never its ``str()``); and the engine refuses text that is not UTF-8, prompts longer than
the model's positions, typed image placeholders and nnsight wrappers it cannot unwrap.

References are computed by hand: ``apply_chat_template(..., tokenize=False)`` then the tokenizer,
the raw Hugging Face ``model.generate`` and ``output_hidden_states``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib import ContrastiveItem, SteerableModel
from steerlib.data.chat import Chat, as_prompts
from steerlib.errors import DataError, InputError, SteerlibError
from steerlib.steerers import P2S, MeanSteer, NoSteer, PromptSteer, as_items
from steerlib.testing import build_tiny, tiny_image

LAYER = 1
CONV = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.tokenizer)


def hand_ids(tok, messages, **kw) -> list[int]:
    """The token ids of a conversation rendered by the tokenizer's own template (no steerlib)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    bos = tok.bos_token
    return tok(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def row(batch, i=0) -> list[int]:
    return batch.input_ids[i][batch.attention_mask[i].bool()].tolist()


def test_conversation_encodes_as_apply_chat_template(llama):
    t, sm = llama
    batch = sm.encode([CONV, "A plain prompt."])
    assert row(batch, 0) == hand_ids(t.tokenizer, CONV)
    assert row(batch, 1) == hand_ids(t.tokenizer, [{"role": "user", "content": "A plain prompt."}])
    # one conversation on its own (a flat list of message dicts is one prompt, as in pipeline())
    assert row(sm.encode(CONV), 0) == hand_ids(t.tokenizer, CONV)
    assert sm.prompt_lengths([CONV]) == [len(hand_ids(t.tokenizer, CONV))]


def test_system_message_in_the_conversation_or_on_the_model(llama):
    t, sm = llama
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    with_system = SteerableModel(t.model, t.tokenizer, system_prompt="Be brief.", validate=False)
    assert row(sm.encode([conv])) == row(with_system.encode(["Name a colour."])) == hand_ids(t.tokenizer, conv)
    with pytest.raises(InputError, match="its own system message and a system prompt"):
        with_system.encode([conv])


def test_read_of_a_conversation_equals_output_hidden_states(llama):
    t, sm = llama
    h = sm.read(sm.encode([CONV]), [LAYER], reduce="last_prompt")[LAYER]
    ids = torch.tensor([hand_ids(t.tokenizer, CONV)])
    with torch.no_grad():
        ref = t.model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0, -1]
    torch.testing.assert_close(h[0], ref.float(), rtol=1e-5, atol=1e-5)


def test_generate_with_messages_equals_hf_generate(llama):
    t, sm = llama
    got = NoSteer().fit(sm, []).generate(sm, CONV, max_new_tokens=6, progress=False)
    ids = torch.tensor([hand_ids(t.tokenizer, CONV)])
    with torch.no_grad():
        out = t.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               pad_token_id=t.tokenizer.pad_token_id or t.tokenizer.eos_token_id)
    assert got == [t.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)]
    # a batch of a conversation and a string, the same as each alone
    both = NoSteer().fit(sm, []).generate(sm, [CONV, "Tell me a joke."], max_new_tokens=6, progress=False)
    assert both[0] == got[0]


def test_fit_on_conversations_teacher_forces_the_template(llama):
    """A P2S vector of a conversation item: the difference of hidden states of the two forced answers,
    by hand from apply_chat_template of the conversation plus each answer."""
    t, sm = llama
    item = ContrastiveItem(prompt=CONV, positive="Paris.", negative="London.", behavior="x")
    assert isinstance(item.prompt, Chat) and hash(item)
    z = P2S(LAYER, reduction="completion_mean", progress=False).fit(sm, []).vectors(sm, [item])[0]

    def states(answer: str) -> torch.Tensor:
        prompt = t.tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
        full = t.tokenizer.apply_chat_template(CONV + [{"role": "assistant", "content": answer}], tokenize=False,
                                               continue_final_message=True)
        n_prompt = len(t.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([t.tokenizer(full, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hs = t.model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
        return hs[n_prompt:].mean(0)

    torch.testing.assert_close(z, (states("Paris.") - states("London.")).float(), rtol=1e-4, atol=1e-5)
    one_turn = ContrastiveItem(prompt=[{"role": "user", "content": "What is the capital of France?"}],
                               positive="Paris.", negative="London.", behavior="x")
    plain = ContrastiveItem(prompt="What is the capital of France?", positive="Paris.", negative="London.",
                            behavior="x")
    st = MeanSteer(LAYER, progress=False).fit(sm, [one_turn])
    torch.testing.assert_close(st.vector_, MeanSteer(LAYER, progress=False).fit(sm, [plain]).vector_)
    assert one_turn.content_hash() != plain.content_hash()  # the cache keys tell them apart
    recs = ContrastiveItem.from_records([{"prompt": CONV, "positive": "a", "negative": "b", "behavior": "x"}])
    assert recs[0].prompt == Chat(CONV)


def test_prompt_baseline_edits_the_last_user_turn(llama):
    _, sm = llama
    st = PromptSteer(instruction=" Be safe.").fit(sm, [])
    (item,) = st.prepare_prompts(as_items([CONV]))
    assert item.prompt.last_user == "What is the capital of France? Be safe."
    assert list(item.prompt[:-1]) == [(m["role"], m["content"]) for m in CONV[:-1]]


class _Frame:  # duck-typed DataFrame: iterating it gives the column names
    columns = ["prompt", "behavior"]

    def __iter__(self):
        return iter(self.columns)


BAD = [
    (None, "None"), (42, "int"), (b"How?", "bytes"), ([["a", "b"]], "list of str"),
    ({"prompt": "hi", "behavior": "benign"}, "from_records"), ({"a": 1}, "dict with keys"),
    (_Frame(), "items_from_table"), ([1.5], "float"), (["ok", None], "Input 1 is None"),
]


@pytest.mark.parametrize("value,phrase", BAD, ids=[type(v).__name__ + str(i) for i, (v, _) in enumerate(BAD)])
def test_not_a_prompt_is_refused_naming_it(llama, value, phrase):
    _, sm = llama
    with pytest.raises(InputError, match=phrase) as ei:
        NoSteer().fit(sm, []).generate(sm, value, max_new_tokens=2, progress=False)
    assert "pass" in str(ei.value) or "convert" in str(ei.value)
    with pytest.raises(SteerlibError):
        sm.encode(value if not isinstance(value, list) else value)


BAD_MESSAGES = [
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user"}], "exactly 'role' and 'content'"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "end with a user message"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "s"}, {"role": "user", "content": "y"}],
     "only come first"),
    ([{"role": "user", "content": ["x"]}], "content is a list"),
]


@pytest.mark.parametrize("value,phrase", BAD_MESSAGES)
def test_malformed_conversation_is_refused(llama, value, phrase):
    _, sm = llama
    with pytest.raises(InputError, match=phrase):
        sm.encode([value])
    with pytest.raises(DataError, match=phrase):
        ContrastiveItem(prompt=value, positive="a", negative="b")


def test_lone_surrogate_is_refused(llama):
    _, sm = llama
    bad = "How do I pick a lock\udcff?"  # what os.fsdecode makes of a non-UTF-8 argv byte
    for call in (lambda: sm.encode([bad]), lambda: sm.prompt_lengths([bad]),
                 lambda: sm.encode(["ok"], completions=[bad]), lambda: sm.encode(["ok"], system="\udc80")):
        with pytest.raises(InputError, match=r"lone surrogate '\\udc"):
            call()
    with pytest.raises(InputError, match="message 0"):
        as_prompts([[{"role": "user", "content": bad}]])


def test_prompt_longer_than_the_positions_is_refused(llama):
    t, sm = llama
    limit = t.model.config.max_position_embeddings
    long = "word " * (limit + 10)
    with pytest.raises(InputError, match=f"more than LlamaForCausalLM's {limit} positions"):
        sm.encode([long])
    n = limit
    while sm.prompt_lengths(["word " * n])[0] > limit - 20:
        n = n * 3 // 4
    ok = sm.encode(["word " * n])
    assert ok.seq_len <= limit
    with pytest.raises(InputError, match="fewer new tokens"):
        sm.generate(ok, None, max_new_tokens=limit)


def test_image_placeholders_must_match_the_images():
    t = build_tiny("llava")
    sv = SteerableModel(t.model, t.processor)
    img = tiny_image(1)
    with pytest.raises(InputError, match=r"2 image placeholder\(s\) '<image>' typed into its text, and 1 image"):
        sv.encode(["<image>\n<image>\nWhat is this?"], [[img]])
    with pytest.raises(InputError, match="contains an image placeholder but no image was given"):
        sv.encode(["<image>\nWhat is this?"], [[]])
    b = sv.encode([[{"role": "user", "content": "What is this?"}]], [[img]])  # a conversation takes its images too
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert b.texts[0] == t.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert int(b.image_mask.sum()) > 0


def test_nnsight_wrapper_is_unwrapped_or_refused(llama):
    from nnsight import LanguageModel

    t, sm = llama
    lm = LanguageModel(t.model, tokenizer=t.tokenizer)
    wrapped = SteerableModel(lm, t.tokenizer)
    assert wrapped.model is t.model
    b = sm.encode(["Hi"])
    torch.testing.assert_close(wrapped.forward(b), sm.forward(b))
    with pytest.raises(InputError, match="pass the underlying Hugging Face model"):
        SteerableModel(lm.model.layers, t.tokenizer)


def test_scoring_sees_the_conversation(llama):
    """Perplexity and a conversation judge render a conversation prompt with its turns (never its repr)."""
    from steerlib.eval.judges import ClassifierJudge
    from steerlib.eval.metrics import _encode_prompt

    t, _ = llama
    chat = Chat(CONV)
    assert _encode_prompt(t.tokenizer, chat, True) == hand_ids(t.tokenizer, CONV)
    judge = ClassifierJudge(t.model, t.tokenizer, mode="conversation", name="j")
    want = t.tokenizer.apply_chat_template([*CONV[1:], {"role": "assistant", "content": "Paris."}], tokenize=False)
    assert judge.format(chat, "Paris.").startswith(want)


def test_conversations_from_a_jsonl_file_with_a_template(tmp_path):
    import json

    from steerlib.data import items_from_file

    path = tmp_path / "convs.jsonl"
    path.write_text(json.dumps({"prompt": CONV}) + "\n" + json.dumps({"prompt": "Plain?"}) + "\n", encoding="utf-8")
    conv_item, plain_item = items_from_file(path, template="harmful")
    assert isinstance(conv_item.prompt, Chat) and conv_item.has_completions
    assert list(conv_item.prompt[:-1]) == [(m["role"], m["content"]) for m in CONV[:-1]]
    assert conv_item.prompt.last_user.startswith(CONV[-1]["content"])
    assert conv_item.prompt.last_user[len(CONV[-1]["content"]):] == plain_item.prompt[len("Plain?"):]
