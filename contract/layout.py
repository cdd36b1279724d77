"""Where every file of a run lives: one typed layout per kind of run, for writers and readers.

A curation run's output folder is what the training client and the service read; a training
run's folder is what the service's progress pages and the ablation report read. Each file name
is spelled here once, so a writer and its readers cannot drift apart, and the web process can
find a trainer's files without importing torch (this module imports nothing beyond the
standard library).

A layout's `root` is a local path or a URI (`s3://bucket/run`); its properties (for the files
read or written by more than one module) join with "/", which is right for both. The names
themselves are class attributes (`CurationRun.STATS`), for code that joins onto a `Path`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


def join(root: str, *parts: str) -> str:
    """`root/part/...` for a local path or a URI (no normalisation: `s3://b/x` stays a URI)."""
    return "/".join([str(root).rstrip("/"), *parts])


@dataclass(frozen=True)
class CurationRun:
    """The output folder of `flywheel curate` (curation.pipeline.Pipeline)."""

    root: str

    DATA: ClassVar[str] = "data"  # kept documents, Parquet
    REJECTS: ClassVar[str] = "rejects"  # dropped documents with their reasons, Parquet
    STATS: ClassVar[str] = "stats.json"  # per-stage accounting, written last but the manifest
    MANIFEST: ClassVar[str] = "manifest.json"  # the contract with the trainer (tokenize stage)
    TOKENIZER: ClassVar[str] = "tokenizer.json"  # Hugging Face `tokenizers` file
    SHARDS: ClassVar[str] = "shards"  # shard-<key>-<n>-<hash>.bin / .idx
    MINHASH_INDEX: ClassVar[str] = "index/minhash"  # signatures and bands, for dedup_against
    MINHASH_INDEX_META: ClassVar[str] = "index/minhash.json"

    @property
    def data(self) -> str:
        return join(self.root, self.DATA)

    @property
    def rejects(self) -> str:
        return join(self.root, self.REJECTS)

    @property
    def stats(self) -> str:
        return join(self.root, self.STATS)

    @property
    def manifest(self) -> str:
        return join(self.root, self.MANIFEST)

    @property
    def tokenizer(self) -> str:
        return join(self.root, self.TOKENIZER)

    @property
    def shards(self) -> str:
        return join(self.root, self.SHARDS)

    @property
    def minhash_index(self) -> str:
        return join(self.root, self.MINHASH_INDEX)

    @property
    def minhash_index_meta(self) -> str:
        return join(self.root, self.MINHASH_INDEX_META)


@dataclass(frozen=True)
class TrainingRun:
    """The `--out` folder of `flywheel train` (training.trainer, training.checkpoint)."""

    root: str

    CONFIG: ClassVar[str] = "train_config.json"  # the job's config, as the service submitted it
    METRICS: ClassVar[str] = "metrics.jsonl"  # one line per logged step
    EVAL: ClassVar[str] = "eval.jsonl"  # one line per evaluation
    CHECKPOINTS: ClassVar[str] = "checkpoints"  # step_NNNNNNNN/ DCP folders
    CHECKPOINT_STEP: ClassVar[str] = "step_"  # a checkpoint folder's name before its 8-digit step
    CHECKPOINT_META: ClassVar[str] = "meta.json"  # inside each checkpoint folder, written last

    @staticmethod
    def rolled_back(log: str) -> str:
        """Where a log's lines past a resumed checkpoint go: metrics.jsonl -> metrics.rolled_back.jsonl."""
        return log.removesuffix(".jsonl") + ".rolled_back.jsonl"

    @property
    def metrics(self) -> str:
        return join(self.root, self.METRICS)

    @property
    def eval(self) -> str:
        return join(self.root, self.EVAL)

    @property
    def checkpoints(self) -> str:
        return join(self.root, self.CHECKPOINTS)


@dataclass(frozen=True)
class AblationRun:
    """The output folder of `flywheel ablate` (workflows.ablation.runner): one curation run per
    variant, one training run per (variant, budget, seed), and the result."""

    root: str

    RESULT: ClassVar[str] = "ablation.json"
    CONFIG: ClassVar[str] = "ablation_config.json"
    TOKENIZER: ClassVar[str] = CurationRun.TOKENIZER  # shared by every variant
    POOL: ClassVar[str] = "pool"  # the corpus minus the held-out documents
    VARIANTS: ClassVar[str] = "variants"
    CURATED: ClassVar[str] = "curated"  # a variant's curation run, inside its folder
    TRAIN: ClassVar[str] = "train"  # a variant's training run, inside its folder (one budget, one seed: old runs)
    RUNS: ClassVar[str] = "runs"  # a variant's training runs, <budget label>-seed<seed>/, inside its folder

    @property
    def result(self) -> str:
        return join(self.root, self.RESULT)

    def variant(self, name: str) -> str:
        return join(self.root, self.VARIANTS, name)

    def variant_training(self, name: str) -> TrainingRun:
        """Where an ablation from before seeds and budgets trained a variant (read by the service)."""
        return TrainingRun(join(self.variant(name), self.TRAIN))

    @staticmethod
    def run_name(budget_label: str, seed: int) -> str:
        return f"{budget_label}-seed{seed}"

    def run(self, variant: str, budget_label: str, seed: int) -> TrainingRun:
        """One training run: `variant`'s data, `budget_label`'s tokens, `seed`'s init and data order."""
        return TrainingRun(join(self.variant(variant), self.RUNS, self.run_name(budget_label, seed)))


@dataclass(frozen=True)
class RedteamRun:
    """The `--out` folder of `flywheel redteam` (training.redteam), which the service's red-team
    pages read (api.posttrain_jobs)."""

    root: str

    RESPONSES: ClassVar[str] = "responses.jsonl"  # one line per prompt: prompt, response, verdict, signals
    REPORT: ClassVar[str] = "report.json"  # failure rates by category and expectation, the config
    REFUSAL_SFT: ClassVar[str] = "refusal_sft.jsonl"  # a redteam job's failures as SFT chats (its --to-sft)

    @property
    def responses(self) -> str:
        return join(self.root, self.RESPONSES)

    @property
    def report(self) -> str:
        return join(self.root, self.REPORT)

    @property
    def refusal_sft(self) -> str:
        return join(self.root, self.REFUSAL_SFT)
