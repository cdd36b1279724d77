"""Training the byte-level BPE tokenizer with Hugging Face `tokenizers` (loading one, which both
halves do, is `contract.tokenizer`).

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

from collections.abc import Iterable, Iterator

import pyarrow.compute as pc
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from contract.tokenizer import SpecialTokens

# Llama 3's pre-tokenisation pattern (tiktoken cl100k's, without possessive quantifiers).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_ALPHABET_SIZE = 256


def train_bpe(texts: Iterable[list[str]], vocab_size: int, special: SpecialTokens, min_frequency: int = 2):
    """Train a byte-level BPE on batches of texts (streamed: memory grows with distinct
    pre-tokens, not with text). The vocabulary may come out smaller than `vocab_size` when the
    sample has fewer distinct merges."""

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


def batched_texts(batches: Iterator, max_docs: int, max_bytes: int) -> Iterator[list[str]]:
    """Lists of texts from Arrow batches with a `text` column, up to `max_docs` / `max_bytes`
    (whichever comes first; a document is never cut)."""

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
