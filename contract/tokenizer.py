"""Loading the dataset's tokenizer: the `tokenizer.json` a curation run writes next to its manifest
and the trainer, evaluator and exporter read back. Its special tokens come first, so `<|bos|>`,
`<|eos|>`, `<|pad|>` get ids 0, 1, 2 (`curation.tokenizer.train_bpe`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


class SpecialTokens(BaseModel):
    """Names of the special tokens (a loaded tokenizer may call them otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bos: str = "<|bos|>"
    eos: str = "<|eos|>"
    pad: str = "<|pad|>"

    def names(self) -> list[str]:
        return [self.bos, self.eos, self.pad]


@dataclass(frozen=True)
class SpecialTokenIds:
    bos: int | None
    eos: int
    pad: int | None


def load_tokenizer(source: str):
    """A tokenizer from tokenizer.json text (what workers get) or a path to one."""
    # `tokenizers` comes with the curate and train extras, not with the light base install.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(source) if source.lstrip().startswith("{") else Tokenizer.from_file(os.fspath(source))
    tok.encode_special_tokens = True  # not stored in the JSON: set on every load
    return tok


def special_ids(tok, special: SpecialTokens) -> SpecialTokenIds:
    """Ids of the special tokens; EOS is required (it separates documents), BOS/PAD optional."""
    eos = tok.token_to_id(special.eos)
    if eos is None:
        raise ValueError(f"the tokenizer has no end-of-document token {special.eos!r}; "
                         "name its EOS token in the stage's `special_tokens`")
    return SpecialTokenIds(bos=tok.token_to_id(special.bos), eos=eos, pad=tok.token_to_id(special.pad))


def vocab_size_of(tok) -> int:
    """One past the largest id (added tokens included): what a shard's ids stay below."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1
