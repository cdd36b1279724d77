"""`pii`: redact personal data in every message and field, with the pii stage's engine.

The engine (Presidio patterns with checksums, spaCy NER on name windows) and its parameters
are the pretraining stage's (`curation.stages.pii`); each field is redacted on its own, so a
placeholder never straddles two messages, and the record keeps its shape. The record kind plays
the stage's `domain` (`ner_domains: [chat]` limits NER to conversations). With `max_density`,
a record with more entities per 100 words is dropped as `pii_density`, as the stage does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from curation.posttrain.rows import Verdict
from curation.stages.base import RunContext
from curation.stages.pii import PiiParams, PiiRedaction

NAME = "pii"
METHOD = PiiRedaction.method
DENSITY = "pii_density"


def redact(verdicts: list[Verdict], p: PiiParams, ctx: RunContext) -> tuple[list[Verdict], dict[str, Any]]:
    """(every row with its fields redacted and a verdict, the summary for stats.json)."""
    stage = PiiRedaction(p, ctx)
    stage.setup()  # Presidio and spaCy: ~2 s, once per run
    owners, texts, allowed = [], [], []
    for i, v in enumerate(verdicts):
        for _, text in v.row.record.fields():
            owners.append(i)
            texts.append(text)
            allowed.append(stage.ner_allowed(v.row.kind))
    redacted = stage.engine.redact_batch(texts, allowed)
    per_row: list[list] = [[] for _ in verdicts]
    for i, r in zip(owners, redacted):
        per_row[i].append(r)
    out, entities, bytes_redacted, with_pii = [], Counter(), 0, 0
    for v, parts in zip(verdicts, per_row):
        counts = Counter()
        for r in parts:
            counts.update(r.counts)
            bytes_redacted += r.bytes_redacted
        entities.update(counts)
        with_pii += bool(counts)
        row = v.row.with_record(v.row.record.with_fields([r.text for r in parts]))
        reason, detail = "", None
        if p.max_density is not None:
            density = 100.0 * sum(counts.values()) / max(v.row.words, 1)
            if density > p.max_density:
                reason, detail = DENSITY, {"density": round(density, 2), "max_density": p.max_density,
                                           "pii": dict(counts)}
        out.append(Verdict(row, reason, detail))
    return out, {"entities": dict(sorted(entities.items())), "bytes_redacted": bytes_redacted,
                 "docs_with_pii": with_pii}
