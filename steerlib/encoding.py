"""Chat-template encoding: prompts (with images, with teacher-forced completions) to a :class:`Batch`.

:class:`ChatEncoder` renders prompts through a family adapter's chat template and tokenizes them
as one left-padded batch; :class:`Batch` carries the inputs plus the bookkeeping positions need
(where the prompt ends, how long the forced completion and the template's trailer are, which
tokens are image tokens). Nothing here runs the model, and nothing here imports the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .adapters.base import Adapter
from .data.chat import Prompt, as_prompts, check_text
from .data.items import ImageLike, load_image
from .errors import InputError, PositionError, ShapeMismatchError
from .positions import TOKEN_POSITIONS, TokenPosition


@dataclass
class Batch:
    """An encoded, left-padded batch plus the bookkeeping positions need.

    ``completion_len`` counts the tokens after the prompt (a teacher-forced completion and, with
    ``close_turn``, the template's end-of-turn trailer); ``trailer_len`` counts the trailer alone;
    ``gen_prompt_len`` counts the chat template's generation-prompt tokens (-1 when unknown).
    """

    inputs: dict[str, Tensor]
    image_mask: Bool[Tensor, "batch seq"]
    completion_len: Int[Tensor, " batch"]
    trailer_len: Int[Tensor, " batch"]
    gen_prompt_len: Int[Tensor, " batch"]
    texts: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> Int[Tensor, "batch seq"]:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> Int[Tensor, "batch seq"]:
        return self.inputs["attention_mask"]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def index(self, position: TokenPosition) -> Int[Tensor, " batch"]:
        """The sequence index of one token per row (on the CPU, like the batch's bookkeeping).

        ``position`` is a :data:`~steerlib.positions.TokenPosition`:

        * ``"last_prompt"``: the last prompt token (left padding puts prompts flush right, so it is
          ``seq_len - 1`` minus the forced completion's length);
        * ``"last_prompt_no_gen"``: the last token before the chat template's generation prompt
          (the paper's safety L2S input); raises :class:`PositionError` when the template's prompt
          without the generation prompt is not a prefix of the prompt with it;
        * ``"last_token"``: the row's very last token (``seq_len - 1``; the end of a closed,
          teacher-forced assistant turn).

        Use it as ``h[torch.arange(batch.size), batch.index("last_prompt")]`` on a ``[batch, seq, d]``
        state.
        """
        if position == "last_prompt":
            return self.seq_len - 1 - self.completion_len
        if position == "last_prompt_no_gen":
            if (self.gen_prompt_len < 0).any():
                raise PositionError(
                    "This chat template's prompt without the generation prompt is not a prefix of the prompt "
                    "with it, so 'last_prompt_no_gen' is undefined; use 'last_prompt'."
                )
            return self.index("last_prompt") - self.gen_prompt_len
        if position == "last_token":
            return torch.full((self.size,), self.seq_len - 1, dtype=torch.long)
        raise PositionError(f"Unknown token position {position!r}; use one of {', '.join(TOKEN_POSITIONS)}.")

    @property
    def last_prompt_index(self) -> Int[Tensor, " batch"]:
        """Index of each row's last prompt token: ``index("last_prompt")``."""
        return self.index("last_prompt")

    @property
    def last_prompt_no_gen_index(self) -> Int[Tensor, " batch"]:
        """Index of the last token before the generation prompt: ``index("last_prompt_no_gen")``."""
        return self.index("last_prompt_no_gen")

    def completion_mask(self) -> Bool[Tensor, "batch seq"]:
        """The forced completion tokens (without the template's trailer)."""
        idx = torch.arange(self.seq_len)[None, :]
        start = self.last_prompt_index[:, None]
        end = (self.seq_len - 1 - self.trailer_len)[:, None]
        return (idx > start) & (idx <= end)

    def prompt_mask(self) -> Bool[Tensor, "batch seq"]:
        idx = torch.arange(self.seq_len)[None, :]
        return self.attention_mask.bool() & (idx <= self.last_prompt_index[:, None])

    def select(self, rows: Sequence[int]) -> "Batch":
        """A sub-batch (text-only inputs; VLM pixel tensors are not sliceable in general)."""
        keys = {k for k, v in self.inputs.items() if isinstance(v, Tensor) and v.shape[:1] != self.input_ids.shape[:1]}
        if keys or any(k.startswith("pixel") for k in self.inputs):
            raise InputError("Cannot slice a batch holding image inputs; encode the rows you need instead.")
        idx = torch.as_tensor(list(rows))
        inputs = {k: v[idx] for k, v in self.inputs.items()}
        # drop all-pad columns on the left so the sub-batch matches a fresh encoding
        keep = int(inputs["attention_mask"].sum(1).max())
        cut = self.seq_len - keep
        inputs = {k: (v[:, cut:] if v.dim() >= 2 and v.shape[1] == self.seq_len else v) for k, v in inputs.items()}
        return Batch(inputs=inputs, image_mask=self.image_mask[idx][:, cut:], completion_len=self.completion_len[idx],
                     trailer_len=self.trailer_len[idx], gen_prompt_len=self.gen_prompt_len[idx],
                     texts=[self.texts[i] for i in rows] if self.texts else [])


@dataclass(frozen=True)
class ChatEncoder:
    """Renders prompts with a family's chat template and encodes them as a left-padded :class:`Batch`.

    Args:
        adapter: the family adapter (renders prompts, formats images, names dropped keys).
        processor: the processor (VLMs) or tokenizer (text models).
        image_token_ids: the ids of image tokens (empty for text models).
        model_name: the model class name, for error messages.
        max_positions: the model's maximum sequence length (``max_position_embeddings``); longer
            encodings are refused (None: not checked).
    """

    adapter: Adapter
    processor: Any
    image_token_ids: tuple[int, ...] = ()
    model_name: str = "the model"
    max_positions: int | None = None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", None) or self.processor

    def encode(
        self,
        prompts: Prompt | Sequence[Prompt],
        images: Sequence[Sequence[ImageLike]] | None = None,
        *,
        completions: Sequence[str | None] | None = None,
        close_turn: bool = False,
        add_generation_prompt: bool = True,
        system: str | None = None,
    ) -> Batch:
        """Render prompts through the chat template and encode them as one left-padded batch.

        A prompt is a string (one user turn) or a conversation (a list of chat messages, or a
        :class:`~steerlib.data.chat.Chat`), rendered with the template's ``apply_chat_template``.
        ``images[i]`` is the list of images of prompt ``i``. ``completions[i]`` is teacher-forced
        as the start of the assistant turn (``close_turn=True`` closes the turn as the template
        does). Raises :class:`InputError` for anything that is not a prompt, images given to a
        text-only model, a VLM prompt whose image placeholders do not match its images, text
        that is not UTF-8 (a lone surrogate), or an encoding longer than the model's positions.
        """
        adapter, processor = self.adapter, self.processor
        prompts = as_prompts(prompts)
        if not prompts:
            raise InputError("No prompt given: pass a non-empty list of prompts.")
        n = len(prompts)
        if images is not None and len(images) != n:
            raise ShapeMismatchError(f"{len(images)} image lists for {n} prompts; give one list (maybe empty) per prompt.")
        if completions is not None and len(completions) != n:
            raise ShapeMismatchError(f"{len(completions)} completions for {n} prompts; give one per prompt.")
        imgs = [list(r) if r is not None else [] for r in (images or [[] for _ in prompts])]
        if any(imgs) and not adapter.is_vlm:
            raise InputError(
                f"Images were given, but {self.model_name} ({adapter.family}) is a text-only model. "
                "Drop the images or load a vision-language model."
            )
        if any(imgs) and not all(len(r) == len(imgs[0]) for r in imgs):
            raise InputError("Every prompt in a batch must have the same number of images; batch them separately.")
        if system is not None:
            check_text(system, "The system prompt")
        for i, c in enumerate(completions or []):
            if c is not None:
                check_text(c, f"Completion {i}")
        tok = self.tokenizer
        texts, comp_len, trail_len, gp_len = [], [], [], []
        for i, p in enumerate(prompts):
            c = completions[i] if completions is not None else None
            k = len(imgs[i])
            self._check_placeholders(p, k, i)
            base = adapter.render(processor, p, k, system=system, add_generation_prompt=add_generation_prompt or c is not None)
            text = base if c is None else adapter.render(processor, p, k, system=system, completion=c,
                                                         close_turn=close_turn)
            nb = _count(tok, base)
            comp_len.append(_count(tok, text) - nb if c is not None else 0)
            if c is not None and close_turn:
                opened = adapter.render(processor, p, k, system=system, completion=c)
                if not text.startswith(opened):
                    raise InputError(f"The {adapter.family} template renders the open and the closed assistant "
                                     "turn differently; use close_turn=False.")
                trail_len.append(_count(tok, text) - _count(tok, opened))
            else:
                trail_len.append(0)
            bare = adapter.render(processor, p, k, system=system, add_generation_prompt=False)
            gp_len.append(nb - _count(tok, bare) if base.startswith(bare) else -1)
            texts.append(text)
        inputs = self.tokenize(texts, imgs)
        ids = inputs["input_ids"]
        self.check_length(int(ids.shape[1]))
        if completions is not None:  # a processor may append tokens after the text (PaliGemma's "\n")
            extra = torch.tensor([_appended_tokens(tok, texts[i], ids[i]) for i in range(n)])
            comp_len = [c + int(e) if c else c for c, e in zip(comp_len, extra)]
            trail_len = [t + int(e) if c else t for c, t, e in zip(comp_len, trail_len, extra)]
        if self.image_token_ids:
            image_mask = torch.isin(ids, torch.tensor(self.image_token_ids, device=ids.device))
        else:
            image_mask = torch.zeros_like(ids, dtype=torch.bool)
        if adapter.is_vlm:
            for i in range(n):
                has = bool(image_mask[i].any())
                if imgs[i] and not has and self.image_token_ids:
                    raise InputError(f"Prompt {i} was given an image but its encoding has no image tokens; "
                                     "check the chat template or image placeholder.")
                if has and not imgs[i]:
                    raise InputError(f"Prompt {i} contains an image placeholder but no image was given; "
                                     "pass its image (images=[[img], ...]) or remove the placeholder.")
        return Batch(inputs=inputs, image_mask=image_mask.cpu(), completion_len=torch.tensor(comp_len),
                     trailer_len=torch.tensor(trail_len), gen_prompt_len=torch.tensor(gp_len), texts=texts)

    def prompt_lengths(self, prompts: Prompt | Sequence[Prompt], n_images: Sequence[int] | None = None, *,
                       system: str | None = None) -> list[int]:
        """Text tokens of each prompt as :meth:`encode` renders it (chat template and generation
        prompt; an image counts as its placeholder only). For sorting rows into batches."""
        prompts = as_prompts(prompts)
        if system is not None:
            check_text(system, "The system prompt")
        # a text-only model given images: counted without them; encode() reports the mistake
        counts = list(n_images) if n_images is not None and self.adapter.is_vlm else [0] * len(prompts)
        return [_count(self.tokenizer, self.adapter.render(self.processor, p, k, system=system,
                                                           add_generation_prompt=True))
                for p, k in zip(prompts, counts, strict=True)]

    def check_length(self, n_tokens: int, *, new_tokens: int = 0) -> None:
        """Refuse a sequence longer than the model's positions (``n_tokens`` prompt tokens plus
        ``new_tokens`` to generate)."""
        if self.max_positions is None or n_tokens + new_tokens <= self.max_positions:
            return
        more = f" plus {new_tokens} new tokens" if new_tokens else ""
        raise InputError(f"The longest prompt encodes to {n_tokens} tokens{more}, more than {self.model_name}'s "
                         f"{self.max_positions} positions (max_position_embeddings). Shorten the prompt"
                         + (", or ask for fewer new tokens (max_new_tokens)." if new_tokens else "."))

    def image_markers(self) -> tuple[str, ...]:
        """The texts that stand for an image in a rendered prompt (the processor's image token, the
        adapter's placeholder); empty for text models."""
        if not self.adapter.is_vlm:
            return ()
        found = [getattr(self.processor, "image_token", None), getattr(self.tokenizer, "image_token", None),
                 (self.adapter.image_placeholder or "").strip()]
        return tuple(dict.fromkeys(m for m in found if isinstance(m, str) and m))

    def _check_placeholders(self, prompt: Prompt, n_images: int, i: int) -> None:
        """Refuse image placeholders typed into a VLM prompt: the chat template (or the adapter) writes
        one per image given, so a typed one would ask for an image that is not there."""
        markers = self.image_markers()
        if not markers:
            return
        text = prompt if isinstance(prompt, str) else "\n".join(c for _, c in prompt)
        typed = {m: text.count(m) for m in markers if m in text}
        if typed:
            m, k = next(iter(typed.items()))
            if not n_images:
                raise InputError(f"Prompt {i} contains an image placeholder but no image was given; pass its image "
                                 "(images=[[img], ...]) or remove the placeholder.")
            raise InputError(f"Prompt {i} has {k} image placeholder(s) {m!r} typed into its text, and {n_images} "
                             f"image(s) were given: steerlib writes one placeholder per image given (images=[[...]]), "
                             "so the text needs none. Remove the placeholder from the prompt and pass one image per "
                             "placeholder you meant.")

    def tokenize(self, texts: list[str], imgs: list[list[ImageLike]]) -> dict[str, Tensor]:
        """Tokenize rendered texts (and their images) as one left-padded batch of model inputs."""
        tok = self.tokenizer
        bos = getattr(tok, "bos_token", None)
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        if self.processor is tok or not any(imgs):
            # text: encode rows one by one and left-pad ourselves (no need for a pad token)
            rows = [tok(t, add_special_tokens=add_special)["input_ids"] for t in texts]
            pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                if r:
                    ids[i, width - len(r):] = torch.tensor(r)
                    mask[i, width - len(r):] = 1
            return {"input_ids": ids, "attention_mask": mask}
        kwargs: dict[str, Any] = dict(text=texts, return_tensors="pt", padding=True, padding_side="left",
                                      add_special_tokens=add_special)
        if any(imgs):
            kwargs["images"] = self.adapter.format_images([[load_image(im) for im in row] for row in imgs])
        try:
            enc = self.processor(**kwargs)
        except ValueError as e:  # the processor's own checks of its inputs (image count, sizes, ...)
            raise InputError(f"{type(self.processor).__name__} refused the batch: {e} Check the prompts' images "
                             "(one list per prompt, one image per placeholder).") from e
        out = {k: v for k, v in enc.items() if k not in self.adapter.drop_keys and isinstance(v, Tensor)}
        if (out["attention_mask"][:, -1] == 0).any():
            raise InputError("The processor padded on the right; steerlib needs left padding for generation.")
        return out


def _count(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _appended_tokens(tok: Any, text: str, row_ids: Tensor) -> int:
    """How many tokens the processor put after the rendered text's own last tokens (0 usually)."""
    tail = tok(text, add_special_tokens=False)["input_ids"][-3:]
    row = row_ids.tolist()
    for extra in range(0, 4):
        end = len(row) - extra
        if end >= len(tail) and row[end - len(tail):end] == tail:
            return extra
    return 0
