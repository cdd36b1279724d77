"""`language`: fastText language id (lid.176), and optionally a fastText domain classifier.

    - {name: language}                                 # keep English with p >= 0.5
    - {name: language, keep: [en, de, fr], min_score: 0.65}
    - {name: language, keep: any, domain_model: models/domain.bin}   # label docs without a domain

Adds `lang` (ISO code) and `lang_score` (fastText probability). Drop reasons:
`language_low_score` (p < min_score: the label itself is not trusted, so this is checked first)
and `language_not_kept`; detail {lang, score}.

Documents in `skip_domains` (default `code`) are not judged: a natural-language identifier says
little about source code (lid.176 calls most of it English with a low score, and would drop the
rest). They are kept with `lang` and `lang_score` null -- null meaning "not identified", which no
`keep` list can match by accident and which later per-language steps can tell apart.

With `domain_model` (trained by `flywheel train-classifier`, see `curation/classifier.py`) the
stage first sets `domain` where it is null/empty (`assign_domain: missing`), on every document
(`always`), or nowhere (`never`); the domain is assigned before `skip_domains` is applied, so a
document the classifier calls `code` is not language-judged.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from curation import langid  # light: fasttext itself is imported when a model loads
from curation.stages.base import KEPT, REASON, MapStage, StageParams, set_column, with_verdicts

if TYPE_CHECKING:
    import ray.data


class LanguageParams(StageParams):
    keep: list[str] | Literal["any"] = Field(default_factory=lambda: ["en"])
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    skip_domains: list[str] = Field(default_factory=lambda: ["code"])
    model: str | None = None  # a fastText language-id model; None = bundled lid.176.ftz
    domain_model: str | None = None
    assign_domain: Literal["missing", "always", "never"] = "missing"

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and not v:
            raise ValueError("keep: list at least one language, or 'any'")
        return v

    @field_validator("model", "domain_model")
    @classmethod
    def _existing_file(cls, v: str | None) -> str | None:
        # Resolved on the driver: actors may run elsewhere in the file tree.
        if v is None:
            return v
        p = Path(v).expanduser().resolve()
        if not p.is_file():
            raise ValueError(f"model file not found: {v}")
        return str(p)


class LanguageFilter(MapStage):
    name: ClassVar[str] = "language"
    method: ClassVar[str] = "fastText lid.176"
    Params = LanguageParams
    reads = ("id", "text", "domain")
    writes = ("lang", "lang_score", "domain")
    uses_actors = True  # models load once per actor

    params: LanguageParams

    def setup(self) -> None:
        self.lid = langid.load_model(self.params.model)
        self.domain_clf = None
        if self.params.domain_model and self.params.assign_domain != "never":
            self.domain_clf = langid.load_model(self.params.domain_model)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        p = self.params
        texts = batch.column("text").to_pylist()
        n = len(texts)
        domains = batch.column("domain").to_pylist() if "domain" in batch.column_names else [None] * n

        if self.domain_clf is not None:
            todo = [i for i, d in enumerate(domains) if p.assign_domain == "always" or not d]
            labels, _ = langid.predict(self.domain_clf, [texts[i] for i in todo])
            for i, label in zip(todo, labels):
                domains[i] = label or domains[i]
            batch = set_column(batch, "domain", pa.array(domains, pa.string()))

        judged = [i for i, d in enumerate(domains) if d not in p.skip_domains]
        langs: list[str | None] = [None] * n
        scores: list[float | None] = [None] * n
        for i, lang, score in zip(judged, *langid.predict(self.lid, [texts[i] for i in judged])):
            langs[i], scores[i] = lang, score

        reasons, details = [KEPT] * n, [None] * n
        for i in judged:
            if scores[i] < p.min_score:
                reasons[i] = "language_low_score"
            elif p.keep != "any" and langs[i] not in p.keep:
                reasons[i] = "language_not_kept"
            else:
                continue
            details[i] = {"lang": langs[i], "score": round(scores[i], 4)}

        batch = set_column(batch, "lang", pa.array(langs, pa.string()))
        batch = set_column(batch, "lang_score", pa.array(scores, pa.float32()))
        return with_verdicts(batch, reasons, details)

    def summarize(self, out: "ray.data.Dataset") -> dict[str, Any]:
        """Documents per identified language, kept and dropped (null: not judged)."""
        tallies = out.select_columns(["lang", REASON]).map_batches(_tally, batch_format="pyarrow")
        kept: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for row in tallies.take_all():
            kept.update(json.loads(row["kept"]))
            dropped.update(json.loads(row["dropped"]))
        return {"languages_kept": dict(kept.most_common()), "languages_dropped": dict(dropped.most_common(20))}


def _tally(batch: pa.Table) -> pa.Table:
    kept: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for lang, reason in zip(batch.column("lang").to_pylist(), batch.column(REASON).to_pylist()):
        (dropped if reason else kept)[lang or "null"] += 1
    return pa.table({"kept": [json.dumps(kept)], "dropped": [json.dumps(dropped)]})
