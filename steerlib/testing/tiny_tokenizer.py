"""In-memory byte-level BPE tokenizers for the tiny offline test models.

One small BPE vocabulary is trained once per process on a fixed English corpus (so ordinary
words split into a few pieces), then every family wraps a fresh copy of it as a
:class:`~transformers.PreTrainedTokenizerFast` with its own special tokens. Nothing touches the
network or the disk.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

#: Size of the trained BPE vocabulary, before any family's special tokens are added.
BASE_VOCAB_SIZE: int = 400

#: The training corpus: varied everyday English, questions about images, refusals and answers.
CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "What is shown in this image?",
    "Describe the picture in one sentence.",
    "Is there a cat in the image? Answer yes or no.",
    "Yes, there is a cat sitting on the table.",
    "No, there is no dog in the picture.",
    "A man is riding a bicycle down the street.",
    "Two people are walking along the beach at sunset.",
    "The woman holds a red umbrella in the rain.",
    "How many cars are parked in front of the house?",
    "There are three cars and a small truck.",
    "I am sorry, but I cannot help with that request.",
    "Sure, here is a short and helpful answer.",
    "Please explain how the water cycle works.",
    "Water evaporates, forms clouds, and falls again as rain.",
    "You are a helpful assistant that answers questions.",
    "The system prompt tells the model how to behave.",
    "The user asks a question and the assistant replies.",
    "My favourite colour is blue, and my sister likes green.",
    "The children played football in the park after school.",
    "She opened the window because the room was too warm.",
    "Can you write a poem about the sea and the moon?",
    "The train to London leaves at seven in the morning.",
    "He bought bread, milk, eggs and apples at the market.",
    "This is a safe and harmless question about cooking pasta.",
    "How do I make a dangerous weapon at home?",
    "That would be harmful, so I will not give instructions.",
    "The kitchen has a white fridge, a stove and a wooden table.",
    "A bird is flying above the old stone bridge.",
    "The computer screen shows a chart with numbers and text.",
    "Let me think about it step by step before I answer.",
    "The doctor said the patient should rest for a few days.",
    "Where is the nearest hospital or police station?",
    "The image contains a person, a horse and a large tree.",
    "Is the light on or off? The light is on.",
    "We visited the museum and saw many beautiful paintings.",
    "Thank you very much for your help today!",
    "The answer is 42, but the question is still unclear.",
    "Please summarise the following text in simple words.",
    "An expert would check the facts before giving advice.",
    "User: What is in this image? Assistant: A cat.",
    "What does the user want? The user wants a short answer.",
    "The model answers the user, and the system sets the rules.",
    "What is the assistant doing? The assistant is writing.",
    "What colour is the car? What time is it?",
    "System: you are a model that helps the user.",
)


@functools.lru_cache(maxsize=1)
def _base_bpe_json() -> str:
    """Train the shared BPE once; return it serialised (an immutable string)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def make_tokenizer(
    *,
    bos_token: str,
    eos_token: str,
    pad_token: str,
    named_tokens: Mapping[str, str] | None = None,
    other_special_tokens: Sequence[str] = (),
    chat_template: str | None = None,
    model_max_length: int = 512,
) -> PreTrainedTokenizerBase:
    """A fresh tokenizer: the shared BPE plus this family's special tokens.

    Args:
        bos_token, eos_token, pad_token: the usual special tokens (added if new).
        named_tokens: attribute name -> token (``{"image_token": "<image>"}`` gives
            ``tok.image_token`` and ``tok.image_token_id``), as processors look them up.
        other_special_tokens: further special tokens without an attribute (turn markers).
        chat_template: the Jinja chat template.
        model_max_length: the longest input the tiny model accepts.

    The tokenizer never inserts BOS/EOS by itself (``add_special_tokens`` is a no-op): chat
    templates write BOS where the real family's token sequence starts with one.
    """
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_base_bpe_json()),
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens=dict(named_tokens or {}),
        model_max_length=model_max_length,
    )
    named = set((named_tokens or {}).values()) | {bos_token, eos_token, pad_token}
    others = [t for t in dict.fromkeys(other_special_tokens) if t not in named]
    if others:
        tok.add_special_tokens({"additional_special_tokens": others}, replace_extra_special_tokens=False)
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
