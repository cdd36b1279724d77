"""The chat template and its loss mask: Hugging Face chat records as token ids for SFT.

    ids, loss_mask = encode_chat({"messages": [...]}, tokenizer, eos_id)   # training (SFT)
    prompt_ids = encode_prompt(messages, tokenizer)                         # generation (PPO, red-team)

The pretraining tokenizer (contract.tokenizer: a byte-level BPE with only <|bos|>, <|eos|>,
<|pad|>) has no role tokens, so roles are text markers, encoded like any text:

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}<EOS>

The loss covers each assistant turn's content and the EOS that ends it (the model must learn to
stop), never the markers, system or user text. Every segment (marker, content, EOS) is encoded
on its own and the ids concatenated, so the mask's boundaries are exact token boundaries; a
prompt from `encode_prompt` is therefore a prefix of the same conversation's `encode_chat` ids.
The tokenizer's `encode_special_tokens` is on (contract.tokenizer.load_tokenizer): a message
that spells "<|eos|>" is encoded as text, it cannot end a turn.

`CHAT_TEMPLATE_JINJA` renders the same text for Hugging Face's `apply_chat_template` (its
`{% generation %}` block marks the assistant tokens for `return_assistant_tokens_mask`); the SFT
run writes it, with the markers, to OUT/tokenizer_config.json (`chat_tokenizer_config`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.tokenizer import SpecialTokens

ROLES = ("system", "user", "assistant")
ASSISTANT = "assistant"
TOKENIZER_CONFIG = "tokenizer_config.json"  # beside an SFT run's checkpoints, as Hugging Face names it


def role_marker(role: str) -> str:
    """The text that opens a turn of `role`."""
    return f"<|{role}|>\n"


TURN_END = "\n"  # what closes a system or user turn (an assistant turn ends with the EOS token)

# The same rendering as `render_chat`, as the Jinja template Hugging Face tokenizer configs carry.
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class ChatFormatError(ValueError):
    """A record that is not a chat conversation (the message names what is wrong)."""


def check_messages(messages: Any) -> list[dict[str, str]]:
    """The messages of a chat record, validated: a non-empty list of {role, content} with a known
    role and string content (other keys, e.g. `name`, are ignored)."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("`messages` must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"messages[{i}] is not an object")
        if message.get("role") not in ROLES:
            raise ChatFormatError(f"messages[{i}].role {message.get('role')!r} is not one of {ROLES}")
        if not isinstance(message.get("content"), str):
            raise ChatFormatError(f"messages[{i}].content must be a string")
    return messages


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False,
                eos_token: str = SpecialTokens().eos) -> str:  # fmt: skip
    """The conversation as text, what CHAT_TEMPLATE_JINJA renders (the EOS as its token text)."""
    parts = []
    for m in check_messages(messages):
        parts.append(role_marker(m["role"]) + m["content"] + (eos_token if m["role"] == ASSISTANT else TURN_END))
    if add_generation_prompt:
        parts.append(role_marker(ASSISTANT))
    return "".join(parts)


def _segments(messages: list[dict[str, str]]) -> list[tuple[str | None, bool]]:
    """(text, counts in the loss) per segment; None stands for the EOS token."""
    segments: list[tuple[str | None, bool]] = []
    for m in check_messages(messages):
        segments.append((role_marker(m["role"]), False))
        if m["role"] == ASSISTANT:
            segments += [(m["content"], True), (None, True)]
        else:
            segments.append((m["content"] + TURN_END, False))
    return segments


def _encode_segments(segments: list[tuple[str | None, bool]], tokenizer: Any, eos_id: int | None):
    texts = [text for text, _ in segments if text is not None]
    encoded = iter(tokenizer.encode_batch(texts, add_special_tokens=False) if texts else [])
    ids: list[int] = []
    mask: list[bool] = []
    for text, counts in segments:
        if text is None:
            if eos_id is None:
                raise ChatFormatError("the tokenizer has no EOS id to end an assistant turn")
            piece = [eos_id]
        else:
            piece = next(encoded).ids
        ids += piece
        mask += [counts] * len(piece)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)


def encode_chat(record: dict[str, Any], tokenizer: Any, eos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, loss_mask) of a chat record {"messages": [...]}: int64 ids and a bool mask of the same
    length, True on the tokens of assistant content and the EOS closing each assistant turn (the
    tokens SFT learns to predict). tokenizer: a `tokenizers.Tokenizer`."""
    if not isinstance(record, dict) or "messages" not in record:
        raise ChatFormatError('a chat record is an object with "messages"')
    return _encode_segments(_segments(record["messages"]), tokenizer, eos_id)


def encode_prompt(messages: list[dict[str, str]], tokenizer: Any, eos_id: int | None = None) -> list[int]:
    """Token ids of a conversation so far, ending with the assistant marker: what generation
    continues (its answer ends at EOS). eos_id: needed only when `messages` hold assistant turns."""
    segments = _segments(messages) + [(role_marker(ASSISTANT), False)]
    ids, _ = _encode_segments(segments, tokenizer, eos_id)
    return ids.tolist()


def chat_tokenizer_config(special: SpecialTokens = SpecialTokens()) -> dict[str, Any]:
    """What an SFT run writes to OUT/tokenizer_config.json, in Hugging Face's keys (the Jinja
    `chat_template`, the special tokens) plus Flywheel's markers, so an export can carry it."""
    return {
        "chat_template": CHAT_TEMPLATE_JINJA,
        "bos_token": special.bos,
        "eos_token": special.eos,
        "pad_token": special.pad,
        "flywheel_chat_format": {
            "roles": list(ROLES),
            "role_markers": {role: role_marker(role) for role in ROLES},
            "turn_end": TURN_END,
            "assistant_turn_end": "eos_token",
            "loss": "assistant content and the EOS ending each assistant turn",
        },
    }
