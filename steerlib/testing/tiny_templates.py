"""Jinja chat templates for the tiny test models, modelled on each real family's template.

Every template accepts messages whose ``content`` is a string or a list of parts
(``{"type": "image"}`` / ``{"type": "text", "text": ...}``), the roles system / user /
assistant, ``add_generation_prompt``, and transformers' ``continue_final_message`` (an
assistant turn is closed with the family's end-of-turn marker, and its content is written
verbatim, so transformers can cut the text right after it). Assistant content sits inside
``{% generation %}`` blocks, so ``return_assistant_tokens_mask`` works too.

Image parts render as the placeholder the family's processor expands (``<image>``,
``<|vision_start|><|image_pad|><|vision_end|>``, ``<IMG_CONTEXT>``, ``<start_of_image>``,
``<|image|>``). Text-only templates raise on image parts.

All literal text lives inside ``{{ ... }}`` so that Jinja's whitespace control never eats a
newline that belongs to the format.
"""

from __future__ import annotations

#: Shared macros. ``render(content, image_text)`` writes parts in order; ``images(content, t)``
#: writes ``t`` once per image part; ``texts(content)`` writes only the text parts.
_MACROS = r"""
{%- macro is_image(part) -%}
{%- if part['type'] in ['image', 'image_url'] or 'image' in part -%}{{ 'yes' }}{%- endif -%}
{%- endmacro -%}
{%- macro render(content, image_text) -%}
{%- if content is string -%}{{ content }}
{%- else -%}
{%- for part in content -%}
{%- if is_image(part) -%}
{%- if image_text is none -%}
{{- raise_exception('This is a text-only model: image parts are not supported.') -}}
{%- endif -%}
{{- image_text -}}
{%- elif part['type'] == 'text' -%}{{ part['text'] }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro images(content, image_text) -%}
{%- if content is not string -%}
{%- for part in content -%}{%- if is_image(part) -%}{{ image_text }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro texts(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}
{%- for part in content -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro bad_role(role) -%}
{{- raise_exception('Unsupported role ' + role + ': use system, user or assistant.') -}}
{%- endmacro -%}
"""


def _fill(template: str, **values: str | None) -> str:
    """Substitute ``@NAME@`` markers with Jinja literals (``none`` for None)."""
    for name, value in values.items():
        template = template.replace(f"@{name.upper()}@", "none" if value is None else repr(value))
    return _MACROS + template


def _chatml(image_text: str | None, default_system: str | None) -> str:
    """ChatML (Qwen2, Qwen2-VL, Qwen2.5-VL, InternVL): ``<|im_start|>role\\n...<|im_end|>\\n``.

    With ``default_system`` a system turn is written when the chat does not start with one.
    """
    return _fill(
        r"""
{%- for message in messages -%}
{%- if loop.first and message['role'] != 'system' and @DEFAULT_SYSTEM@ is not none -%}
{{- '<|im_start|>system\n' + @DEFAULT_SYSTEM@ + '<|im_end|>\n' -}}
{%- endif -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}{{ bad_role(message['role']) }}{%- endif -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{ render(message['content'], @IMAGE@) + '<|im_end|>' }}{%- endgeneration -%}{{ '\n' }}
{%- else -%}
{{- render(message['content'], @IMAGE@) + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}
""",
        image=image_text,
        default_system=default_system,
    )


def _llama3(image_text: str | None) -> str:
    """Llama-3 / Llama-3.2-Vision headers: ``<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>``."""
    return _fill(
        r"""
{{- bos_token -}}
{%- for message in messages -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}{{ bad_role(message['role']) }}{%- endif -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{ render(message['content'], @IMAGE@) + '<|eot_id|>' }}{%- endgeneration -%}
{%- else -%}
{{- render(message['content'], @IMAGE@) + '<|eot_id|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}
""",
        image=image_text,
    )


def _gemma(image_text: str | None, hoist_images: str | None = None) -> str:
    """Gemma turns: ``<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``.

    The system message is folded into the first user turn (as Gemma's template does). With
    ``hoist_images`` every image part is written once, up front, and no BOS is written
    (PaliGemma's processor puts BOS after the last image placeholder).
    """
    return _fill(
        r"""
{%- if @HOIST@ is none -%}
{{- bos_token -}}
{%- else -%}
{%- for message in messages -%}{{ images(message['content'], @HOIST@) }}{%- endfor -%}
{%- endif -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = render(messages[0]['content'], @IMAGE@) + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] not in ['user', 'assistant'] -%}{{ bad_role(message['role']) }}{%- endif -%}
{%- if message['role'] == 'assistant' -%}
{{- '<start_of_turn>model\n' -}}
{%- generation -%}{{ render(message['content'], @IMAGE@) + '<end_of_turn>' }}{%- endgeneration -%}{{ '\n' }}
{%- else -%}
{{- '<start_of_turn>user\n' + (first_user_prefix if loop.first else '') -}}
{{- render(message['content'], @IMAGE@) + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}
""",
        image=image_text,
        hoist=hoist_images,
    )


def _idefics3() -> str:
    """Idefics3 / SmolVLM: ``User:<image>text<end_of_utterance>\\nAssistant: answer<end_of_utterance>\\n``.

    Starts with BOS (``<|begin_of_text|>`` for Idefics3, ``<|im_start|>`` for SmolVLM).
    The generation prompt is ``Assistant:``; a closed assistant turn reads ``Assistant: answer``.
    """
    return _fill(
        r"""
{{- bos_token -}}
{%- for message in messages -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}{{ bad_role(message['role']) }}{%- endif -%}
{{- message['role'] | capitalize -}}
{%- set c = message['content'] -%}
{%- if c is not string and c | length > 0 and is_image(c[0]) -%}{{ ':' }}{%- else -%}{{ ': ' }}{%- endif -%}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{ render(message['content'], '<image>') + '<end_of_utterance>' }}{%- endgeneration -%}{{ '\n' }}
{%- else -%}
{{- render(message['content'], '<image>') + '<end_of_utterance>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}
"""
    )


#: LLaVA-1.5 (Vicuna): ``USER: <image>\ntext ASSISTANT: answer</s>``; images first in a turn.
LLAVA = _fill(
    r"""
{{- bos_token -}}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{- texts(message['content']) + ' ' -}}
{%- elif message['role'] == 'user' -%}
{{- 'USER: ' + images(message['content'], '<image>\n') + texts(message['content']) + ' ' -}}
{%- elif message['role'] == 'assistant' -%}
{{- 'ASSISTANT: ' -}}{%- generation -%}{{ texts(message['content']) + eos_token }}{%- endgeneration -%}
{%- else -%}{{ bad_role(message['role']) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}
"""
)

#: LLaVA-NeXT (Mistral-7B): ``[INST] <image>\ntext [/INST] answer</s>``; the user turn already
#: ends with ``[/INST]``, so ``add_generation_prompt`` adds nothing (as in the real template).
LLAVA_NEXT = _fill(
    r"""
{{- bos_token -}}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{- '<<SYS>>\n' + texts(message['content']) + '\n<</SYS>>\n\n' -}}
{%- elif message['role'] == 'user' -%}
{{- '[INST] ' + images(message['content'], '<image>\n') + texts(message['content']) + ' [/INST]' -}}
{%- elif message['role'] == 'assistant' -%}
{{- ' ' -}}{%- generation -%}{{ texts(message['content']) + eos_token }}{%- endgeneration -%}
{%- else -%}{{ bad_role(message['role']) }}
{%- endif -%}
{%- endfor -%}
"""
)

#: Qwen2-VL / Qwen2.5-VL: ChatML with the default system prompt and vision markers.
QWEN2_VL = _chatml("<|vision_start|><|image_pad|><|vision_end|>", "You are a helpful assistant.")
#: InternVL (Qwen2 backbone): ChatML; an image is ``<IMG_CONTEXT>\n`` (the processor expands it).
INTERNVL = _chatml("<IMG_CONTEXT>\n", None)
#: Qwen2 text: ChatML with the default system prompt.
QWEN2 = _chatml(None, "You are a helpful assistant.")
#: Idefics3 and SmolVLM.
IDEFICS3 = _idefics3()
#: PaliGemma: Gemma turns after the hoisted ``<image>`` placeholders (no BOS: the processor adds it).
PALIGEMMA = _gemma("", hoist_images="<image>")
#: Gemma3: ``<bos><start_of_turn>user\n<start_of_image>text<end_of_turn>\n<start_of_turn>model\n``.
GEMMA3 = _gemma("<start_of_image>")
#: Gemma3 text-only.
GEMMA3_TEXT = _gemma(None)
#: Llama-3.2-Vision: Llama-3 headers, an image is ``<|image|>``.
MLLAMA = _llama3("<|image|>")
#: Llama-3 text.
LLAMA = _llama3(None)
#: GPT-2 has no chat format; a plain Markdown-ish one: ``### User:\ntext\n\n### Assistant:\n``.
GPT2 = _fill(
    r"""
{%- for message in messages -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}{{ bad_role(message['role']) }}{%- endif -%}
{{- '### ' + (message['role'] | capitalize) + ':\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{ render(message['content'], none) + eos_token }}{%- endgeneration -%}{{ '\n\n' }}
{%- else -%}
{{- render(message['content'], none) + '\n\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '### Assistant:\n' }}{%- endif -%}
"""
)
