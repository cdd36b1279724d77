"""The contract between curation and training: token shards, their manifest, and the reader.

Light on purpose (numpy, pydantic, httpx; pyarrow.fs only for object stores): the training
client imports this without Ray, torch or the service. `torch_adapter` (imports torch) is
not re-exported here.
"""

from training.data.dataset import Batch, ManifestDataset, ShardError
from training.data.fetch import CorruptFileError, FetchError, Fetcher, ShardCache
from training.data.manifest import (
    FORMAT_VERSION,
    Manifest,
    Provenance,
    ShardEntry,
    SpecialIds,
    TokenizerInfo,
    Totals,
    build_manifest,
    manifest_schema,
    parse_manifest,
    write_manifest,
)
from training.data.order import SequenceOrder, batch_positions, num_sequences
from training.data.shards import ShardRecord, ShardWriter, dtype_for_vocab, open_index, open_tokens, sha256_file
from training.data.validate import validate_manifest, validate_manifest_cli

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "CorruptFileError",
    "FetchError",
    "Fetcher",
    "Manifest",
    "ManifestDataset",
    "Provenance",
    "SequenceOrder",
    "ShardCache",
    "ShardEntry",
    "ShardError",
    "ShardRecord",
    "ShardWriter",
    "SpecialIds",
    "TokenizerInfo",
    "Totals",
    "batch_positions",
    "build_manifest",
    "dtype_for_vocab",
    "manifest_schema",
    "num_sequences",
    "open_index",
    "open_tokens",
    "parse_manifest",
    "sha256_file",
    "validate_manifest",
    "validate_manifest_cli",
    "write_manifest",
]
