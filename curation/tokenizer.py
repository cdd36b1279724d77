"""The byte-level BPE tokenizer: trained with Hugging Face `tokenizers`, or loaded from a file.

Layout of a trained tokenizer (a plain `tokenizer.json` any HF-compatible loader reads):
- no normaliser: byte-level BPE is lossless, `decode(encode(text)) == text` for any string;
- pre-tokeniser: Llama 3's split regex (contractions, letter runs, numbers in groups of at most
  three digits, punctuation runs, newlines), then GPT-2's byte-to-unicode mapping;
- the special tokens come first, so `<|bos|>`, `<|eos|>`, `<|pad|>` get ids 0, 1, 2;
- no post-processor: the tokenize stage adds EOS (and optionally BOS) itself.

Text that happens to contain "<|eos|>" is encoded as ordinary bytes (`encode_special_tokens`),
so a document cannot forge a document boundary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

# Llama 3's pre-tokenisation pattern (tiktoken cl100k's, without possessive quantifiers).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_ALPHABET_SIZE = 256


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


def train_bpe(texts: Iterable[list[str]], vocab_size: int, special: SpecialTokens, min_frequency: int = 2):
    """Train a byte-level BPE on batches of texts (streamed: memory grows with distinct
    pre-tokens, not with text). The vocabulary may come out smaller than `vocab_size` when the
    sample has fewer distinct merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special.names(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(source: str):
    """A tokenizer from tokenizer.json text (what workers get) or a path to one."""
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


def batched_texts(batches: Iterator, max_docs: int, max_bytes: int) -> Iterator[list[str]]:
    """Lists of texts from Arrow batches with a `text` column, up to `max_docs` / `max_bytes`
    (whichever comes first; a document is never cut)."""
    import pyarrow.compute as pc

    docs = nbytes = 0
    for batch in batches:
        texts = batch["text"]
        sizes = pc.binary_length(texts.cast("binary")).to_pylist()
        take = 0
        for size in sizes:
            if docs + take >= max_docs or nbytes >= max_bytes:
                break
            nbytes += size or 0
            take += 1
        if take:
            yield [t or "" for t in texts.slice(0, take).to_pylist()]
            docs += take
        if docs >= max_docs or nbytes >= max_bytes:
            return
