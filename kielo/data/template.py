"""Prompt templates: the model's own chat template, or kielo's built-in Finnish instruction template.

Whatever template trains a model is saved as the output tokenizer's ``chat_template``, so plain
``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` + ``generate`` reproduces the training
prompt format exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kielo.errors import KieloError

log = logging.getLogger(__name__)

# The built-in template. Plain-text headers ("### Käyttäjä:") use only ordinary, well-trained tokens, which
# matters for base models whose chat-special tokens were never trained. Each assistant turn ends with the
# tokenizer's end-of-sequence token, which the model learns to emit.
BUILTIN_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### Järjestelmä:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Käyttäjä:\n{{ message['content'] }}\n\n"
    "{% else %}### Vastaus:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Vastaus:\n{% endif %}"
)


@dataclass
class Template:
    """A resolved prompt format: the Jinja chat template and the token that ends an answer."""

    name: str  # "builtin" or "chat"
    chat_template: str
    end_token_id: int
    end_token: str


def _probe_end_token(tokenizer, chat_template: str) -> tuple[int, str]:
    """Find the special token a chat template puts right after an assistant message's content."""
    marker = "kielo-probe-7731"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
        chat_template=chat_template,
        tokenize=False,
    )
    tail = text[text.rindex(marker) + len(marker) :]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    for tok_id in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if tok_id in special:
            return tok_id, tokenizer.convert_ids_to_tokens(tok_id)
    if tokenizer.eos_token_id is None:
        raise KieloError(
            "the chat template ends answers with no special token and the tokenizer has no end-of-sequence token",
            "use --data.template builtin with a tokenizer that has an eos token",
        )
    return tokenizer.eos_token_id, tokenizer.eos_token


def resolve_template(tokenizer, mode: str) -> Template:
    """Pick the template for ``data.template`` (auto/builtin/chat)."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if mode == "chat" and not has_chat:
        raise KieloError(
            "data.template is `chat` but the tokenizer has no chat template",
            "use --data.template builtin (or auto), or a model whose tokenizer ships a chat template",
        )
    if mode == "chat" or (mode == "auto" and has_chat):
        end_id, end_tok = _probe_end_token(tokenizer, tokenizer.chat_template)
        return Template("chat", tokenizer.chat_template, end_id, end_tok)
    if tokenizer.eos_token_id is None:
        raise KieloError("the tokenizer has no end-of-sequence token", "use a tokenizer with an eos token")
    return Template("builtin", BUILTIN_TEMPLATE, tokenizer.eos_token_id, tokenizer.eos_token)


def render(tokenizer, template: Template, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render messages as text with the template (special tokens appear as text)."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
