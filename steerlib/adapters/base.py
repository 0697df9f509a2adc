"""What steerlib needs to know about a model family: the :class:`Adapter`.

An adapter is plain data plus a few small methods. It says where the language decoder's
layers live, how many there are and how wide the residual stream is, which token ids are
image tokens, and how prompts (with images, with a teacher-forced assistant completion) are
rendered. It never holds a model: the same adapter serves every checkpoint of a family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.chat import Chat, Prompt
from ..errors import AdapterValidationError, InputError


def resolve_path(root: nn.Module, path: str) -> Any:
    """Follow a dotted attribute path (``"model.language_model.layers"``) from ``root``."""
    obj: Any = root
    for part in path.split("."):
        if part.isdigit():
            obj = obj[int(part)]
        else:
            if not hasattr(obj, part):
                raise AdapterValidationError(
                    f"The model {type(root).__name__} has no attribute path {path!r} (stopped at {part!r}). "
                    "The adapter's layers_path does not match this model; register a corrected adapter "
                    "with steerlib.register_adapter(Adapter(..., layers_path=...))."
                )
            obj = getattr(obj, part)
    return obj


def text_config(config: Any) -> Any:
    """The language model's config (the config itself for text-only models)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


@dataclass(frozen=True)
class Adapter:
    """Description of one model family.

    Attributes:
        family: a short name (``"llava"``).
        model_types: the ``config.model_type`` values this adapter serves.
        layers_path: dotted path from the top HF model to the ``nn.ModuleList`` of decoder blocks.
        is_vlm: whether the family takes images.
        image_token_attrs: config attributes holding image-token ids (first found wins).
        image_placeholder: the text a prompt uses for one image when no chat template renders it.
        nested_images: the processor wants images per sample (``[[img], [img]]``).
        drop_keys: processor outputs the model must not receive (PaliGemma's ``labels``).
        pass_position_ids: pass ``position_ids`` derived from the attention mask to single forwards
            (text models with absolute positions need it for left padding; VLMs compute their own).
        prefix_lm: the prompt attends bidirectionally (PaliGemma); a prompt token's state then
            depends on later prompt tokens.
        notes: anything a user must know (shown in errors and docs).
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str
    is_vlm: bool = False
    image_token_attrs: tuple[str, ...] = ("image_token_id", "image_token_index")
    image_placeholder: str | None = None
    nested_images: bool = False
    drop_keys: tuple[str, ...] = ()
    pass_position_ids: bool = True
    prefix_lm: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # --- the decoder stack ---------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in execution order."""
        layers = resolve_path(model, self.layers_path)
        if not isinstance(layers, nn.ModuleList):
            raise AdapterValidationError(
                f"{self.layers_path!r} on {type(model).__name__} is a {type(layers).__name__}, "
                "not an nn.ModuleList of decoder blocks; fix the adapter's layers_path."
            )
        return layers

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def hidden_size(self, model: nn.Module) -> int:
        cfg = text_config(model.config)
        for name in ("hidden_size", "n_embd", "d_model"):
            if getattr(cfg, name, None):
                return int(getattr(cfg, name))
        raise AdapterValidationError(
            f"Cannot read the hidden size from {type(cfg).__name__}; give the adapter a config with hidden_size."
        )

    # --- images ----------------------------------------------------------------------------
    def image_token_ids(self, model: nn.Module, processor: Any = None) -> tuple[int, ...]:
        """Token ids that stand for image patches in ``input_ids`` (empty for text models)."""
        if not self.is_vlm:
            return ()
        ids: list[int] = []
        for attr in self.image_token_attrs:
            v = getattr(model.config, attr, None)
            if isinstance(v, int) and v >= 0:
                ids.append(v)
                break
        tok = getattr(processor, "tokenizer", processor)
        if not ids and tok is not None and getattr(tok, "image_token_id", None) is not None:
            ids.append(int(tok.image_token_id))
        return tuple(ids)

    def format_images(self, images: Sequence[Sequence[Any]]) -> list[Any]:
        """Images in the layout this family's processor wants for a batch."""
        if self.nested_images:
            return [list(row) for row in images]
        return [im for row in images for im in row]

    # --- prompts ---------------------------------------------------------------------------
    def render(self, processor: Any, prompt: Prompt, n_images: int = 0, *, system: str | None = None,
               add_generation_prompt: bool = True, completion: str | None = None,
               close_turn: bool = False) -> str:
        """Render one user turn or a conversation (and optionally an assistant completion) as model text.

        ``prompt`` is a string (one user turn) or a :class:`~steerlib.data.chat.Chat` (rendered as
        its messages; images go with its last, user, message; a conversation with its own system
        message refuses a second one in ``system``).

        With a chat template the template renders images (``{"type": "image"}`` parts); without
        one, ``image_placeholder`` is repeated ``n_images`` times before the prompt. With
        ``completion`` the text ends with the completion (``close_turn=False``, ready to be
        continued, as the paper's POPE prefix) or with the template's closed assistant turn
        (``close_turn=True``, as the paper's safety runs).
        """
        template_owner = _template_owner(processor)
        chat = prompt if isinstance(prompt, Chat) else None
        if chat is not None and system and chat.system is not None:
            raise InputError("The conversation has its own system message and a system prompt was given too "
                             "(SteerableModel.system_prompt / steerlib --system); give one of them.")
        if template_owner is None:
            if chat is not None:
                raise InputError(f"The {self.family} processor has no chat template, so a conversation (a list of "
                                 "chat messages) cannot be rendered; pass the prompt as one string.")
            if n_images and not self.image_placeholder:
                raise InputError(f"The {self.family} adapter has no image placeholder and the processor no chat template.")
            text = (self.image_placeholder or "") * n_images + prompt
            if system:
                text = system + "\n" + text
            if completion is not None:
                text = text + completion
            return text
        if self.is_vlm:
            content: Any = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        else:
            if n_images:
                raise InputError(
                    f"The model family {self.family!r} is text-only, but {n_images} image(s) were given. "
                    "Drop the images or use a vision-language model."
                )
            content = prompt
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system if not self.is_vlm else [{"type": "text", "text": system}]})
        if chat is not None:  # the conversation's turns; the images go with its last (user) message
            messages += chat.messages(parts=self.is_vlm)[:-1]
            content = ([{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": chat.last_user}]
                       if self.is_vlm else chat.last_user)
        messages.append({"role": "user", "content": content})
        prefix = template_owner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt or completion is not None,
                                                    tokenize=False)
        if completion is None:
            return prefix
        reply = completion if not self.is_vlm else [{"type": "text", "text": completion}]
        convo = messages + [{"role": "assistant", "content": reply}]
        if not close_turn:
            # the template's own spacing between the generation prompt and the answer is kept
            # (LLaVA writes "ASSISTANT: Yes"); HF cuts the rendered turn right after the completion
            try:
                text = template_owner.apply_chat_template(convo, continue_final_message=True, tokenize=False)
            except Exception:  # a template that cannot render an assistant turn
                return prefix + completion
            return text if text.startswith(prefix) and text.endswith(completion) else prefix + completion
        full = template_owner.apply_chat_template(convo, tokenize=False)
        if not full.startswith(prefix) or completion not in full[len(prefix):]:
            raise InputError(
                f"The {self.family} chat template does not render the assistant turn {completion!r} after the "
                "generation prompt; use close_turn=False."
            )
        return full


def _template_owner(processor: Any) -> Any:
    """The object whose ``apply_chat_template`` renders prompts, or None without a template."""
    if processor is None:
        return None
    if getattr(processor, "chat_template", None):
        return processor
    tok = getattr(processor, "tokenizer", None)
    if tok is not None and getattr(tok, "chat_template", None):
        return tok
    return None


def probe_layer_output(model: nn.Module, layers: nn.ModuleList, inputs: dict[str, torch.Tensor]) -> tuple[bool, int]:
    """Run one forward with a raw hook on the first layer; return (output is a tuple, width)."""
    seen: dict[str, Any] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        seen["out"] = out

    handle = layers[0].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    out = seen.get("out")
    if out is None:
        raise AdapterValidationError("The probe forward never reached the first decoder layer; the layers_path is wrong.")
    is_tuple = isinstance(out, tuple)
    hidden = out[0] if is_tuple else out
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise AdapterValidationError(
            f"The decoder layer returned {type(hidden).__name__} of shape {getattr(hidden, 'shape', None)}; "
            "expected a [batch, seq, hidden] tensor (or a tuple starting with one)."
        )
    return is_tuple, int(hidden.shape[-1])
