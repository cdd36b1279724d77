"""A batch of texts as the UTF-8 bytes Arrow holds them in, for numpy passes over whole batches.

Word counting (`curation.stages.base.count_words`) and the dedup word split
(`curation.dedup.shingles.split_words`) both find words as byte runs: one comparison per byte
at memory speed, no Python call per text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def string_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets from 0, uint8 bytes) of a string or large_string array, without copying
    the bytes: text i is `data[offsets[i]:offsets[i+1]]`."""
    _, offsets_buf, data_buf = texts.buffers()
    wide = pa.types.is_large_string(texts.type)
    offsets = np.frombuffer(offsets_buf, np.int64 if wide else np.int32)[texts.offset:texts.offset + len(texts) + 1]
    lo = int(offsets[0])
    offsets = offsets.astype(np.int64) - lo
    data = np.frombuffer(data_buf, np.uint8)[lo:lo + int(offsets[-1])] if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def word_starts(space: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Byte positions where a word starts: a non-space after a space, or at the start of a text
    (a word never runs across two texts). `space` is one bool per byte."""
    start = np.empty(len(space), bool)
    np.greater(space[:-1], space[1:], out=start[1:])  # space -> non-space: a non-space already
    # Only a text's first byte (and the first byte of all) has no space before it to test; setting
    # those few alone saves two passes over every byte (a `~space` copy and an and).
    heads = offsets[:-1][offsets[:-1] < len(space)]
    start[:1] = ~space[:1]
    start[heads] = ~space[heads]
    return np.flatnonzero(start)
