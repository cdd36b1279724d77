"""`pii`: find personal data with Presidio and replace it with typed placeholders or hashes.

    - {name: pii}                                      # every entity, <EMAIL>, <PERSON>, ...
    - {name: pii, mode: hash, max_density: 5}          # <PERSON:3f2a1b>; drop PII-dense docs

Patterns with checksums (cards: network prefix, length and Luhn; IBAN: mod 97; Bitcoin:
base58/bech32) on the regions where they can match, plus spaCy NER for PERSON/LOCATION on
windows around name candidates, all offline (`curation/pii/engine.py`). NER runs only in the
domains it is meant for (not `code`, where names are identifiers and authors). Every row is
redacted, also the rows this stage drops, so `rejects/` holds no more personal data than the
kept shards.

Reads `text`, `domain`; rewrites `text`, `n_tokens`; adds `pii_counts` (JSON {type: n}) and
`pii_bytes` (UTF-8 bytes of original text replaced). Drop reason: `pii_density` (entities per
100 words above `max_density`), only when `max_density` is set.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from curation.pii import DEFAULT_PHONE_REGIONS, ENTITIES, NER_ENTITIES
from curation.stages.base import KEPT, MapStage, StageParams, count_words, set_column, with_verdicts

if TYPE_CHECKING:
    import ray.data

EntityName = Literal[ENTITIES]  # type: ignore[valid-type]


class PiiParams(StageParams):
    entities: list[EntityName] = Field(default_factory=lambda: list(ENTITIES), min_length=1)
    mode: Literal["placeholder", "hash"] = "placeholder"
    # Presidio scores: validated patterns 1.0, NER 0.85, IPs 0.6, SSN 0.5, phones 0.4 (more
    # with a context word such as "call" nearby). 0.4 keeps a bare phone number.
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    # Domains whose documents are NER-scanned: None = every domain not in ner_skip_domains.
    ner_domains: list[str] | None = None
    ner_skip_domains: list[str] = Field(default_factory=lambda: ["code"])
    # candidates: NER on windows around words usually written capitalised (curation/pii/names.py);
    # document: NER over whole documents, every entity kept (Presidio's way; ~10x slower).
    ner_scope: Literal["candidates", "document"] = "candidates"
    # A capitalised word is a name candidate when P(capitalised) / P(any case) reaches this.
    name_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Regions whose national number formats are parsed (numbers with +country code are found
    # whatever the list); the default and why: curation/pii/__init__.py.
    phone_regions: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = Field(
        default_factory=lambda: list(DEFAULT_PHONE_REGIONS), min_length=1)
    max_density: float | None = Field(None, gt=0)


class PiiRedaction(MapStage):
    name: ClassVar[str] = "pii"
    method: ClassVar[str] = "Regex + NER (Presidio)"
    Params = PiiParams
    reads = ("id", "text", "domain")
    writes = ("text", "n_tokens", "pii_counts", "pii_bytes")
    uses_actors = True  # the spaCy model loads once per actor
    batch_size = 256

    params: PiiParams

    def setup(self) -> None:
        # Presidio and spaCy (~2 s): loaded in each actor, not when the config is checked
        from curation.pii.engine import PiiEngine

        p = self.params
        self.engine = PiiEngine(entities=p.entities, score_threshold=p.score_threshold,
                                phone_regions=p.phone_regions, ner_scope=p.ner_scope,
                                name_threshold=p.name_threshold, mode=p.mode, salt=self.ctx.seed)

    def ner_allowed(self, domain: str | None) -> bool:
        p = self.params
        if not NER_ENTITIES & set(p.entities):
            return False
        domain = domain or ""
        return (p.ner_domains is None or domain in p.ner_domains) and domain not in p.ner_skip_domains

    def process_batch(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch.column("text").to_pylist()]
        domains = batch.column("domain").to_pylist() if "domain" in batch.column_names else [None] * len(texts)
        redacted = self.engine.redact_batch(texts, [self.ner_allowed(d) for d in domains])

        reasons, details = [KEPT] * len(texts), [None] * len(texts)
        if self.params.max_density is not None:
            words = count_words(batch.column("text")).to_pylist()
            for i, (r, n_words) in enumerate(zip(redacted, words)):
                density = 100.0 * sum(r.counts.values()) / max(n_words or 0, 1)
                if density > self.params.max_density:
                    reasons[i] = "pii_density"
                    details[i] = {"density": round(density, 2), "max_density": self.params.max_density,
                                  "pii": r.counts}

        new_text = pa.array([r.text for r in redacted], pa.string())
        batch = set_column(batch, "text", new_text)
        batch = set_column(batch, "n_tokens", count_words(new_text))
        batch = set_column(batch, "pii_counts", pa.array([json.dumps(r.counts, sort_keys=True) for r in redacted],
                                                         pa.string()))
        batch = set_column(batch, "pii_bytes", pa.array([r.bytes_redacted for r in redacted], pa.int64()))
        return with_verdicts(batch, reasons, details)

    def summarize(self, out: "ray.data.Dataset") -> dict[str, Any]:
        """Entities by type and bytes redacted; only the two small columns leave the workers."""
        tallies = out.select_columns(["pii_counts", "pii_bytes"]).map_batches(_tally, batch_format="pyarrow")
        entities: Counter[str] = Counter()
        bytes_redacted = docs_with_pii = 0
        for row in tallies.take_all():
            entities.update(json.loads(row["entities"]))
            bytes_redacted += row["bytes"]
            docs_with_pii += row["docs"]
        return {"entities": dict(sorted(entities.items())), "bytes_redacted": bytes_redacted,
                "docs_with_pii": docs_with_pii}


def _tally(batch: pa.Table) -> pa.Table:
    """One row per block: summed pii_counts, pii_bytes and documents with any PII."""
    entities: Counter[str] = Counter()
    docs = 0
    for counts in batch.column("pii_counts").to_pylist():
        c = json.loads(counts)
        entities.update(c)
        docs += bool(c)
    total = sum(v or 0 for v in batch.column("pii_bytes").to_pylist())
    return pa.table({"entities": [json.dumps(entities)], "bytes": pa.array([total], pa.int64()),
                     "docs": pa.array([docs], pa.int64())})
