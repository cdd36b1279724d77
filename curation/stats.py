"""stats.json: per-stage document and token accounting, and the removal table the article prints.

    {"version": 1, "token_unit": "whitespace_words",
     "stages": [{"name", "method", "docs_in", "docs_out", "tokens_in", "tokens_out",
                 "dropped": {"<reason>": docs}, "dropped_tokens": {...}, "seconds", "bytes_in",
                 "bytes_out", ...}],
     "totals": {...}}

Invariant (checked when the run is made and again when stats are loaded):
for every stage, docs_in == docs_out + sum(dropped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATS_VERSION = 1
TOKEN_UNIT = "whitespace_words"


@dataclass
class StageStats:
    name: str
    method: str
    docs_in: int
    docs_out: int
    tokens_in: int
    tokens_out: int
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_tokens: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # UTF-8 bytes of text in and kept (throughput per stage; 0 in stats written before them)
    bytes_in: int = 0
    bytes_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def docs_removed(self) -> int:
        return self.docs_in - self.docs_out

    @property
    def tokens_removed(self) -> int:
        """Tokens of dropped documents plus tokens cut out of kept ones (sentence dedup, ...)."""
        return self.tokens_in - self.tokens_out

    def check(self) -> None:
        if self.docs_in != self.docs_out + sum(self.dropped.values()):
            raise ValueError(f"stage {self.name}: docs_in {self.docs_in} != docs_out {self.docs_out} "
                             f"+ dropped {sum(self.dropped.values())}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["tokens_removed"] = self.tokens_removed
        # Tokens cut out of documents that were kept (sentence dedup, PII placeholders).
        d["tokens_edited"] = self.tokens_removed - sum(self.dropped_tokens.values())
        if extra:
            d["extra"] = extra
        return d


@dataclass
class RunStats:
    run_id: str
    config_sha256: str
    config: dict[str, Any]
    stages: list[StageStats] = field(default_factory=list)
    seconds: float = 0.0

    def totals(self) -> dict[str, Any]:
        if not self.stages:
            return {}
        first, last = self.stages[0], self.stages[-1]
        # The run's input is what was read: malformed records count as input that was removed.
        docs_in, tokens_in = first.docs_in, first.tokens_in
        return {
            "docs_in": docs_in, "docs_out": last.docs_out,
            "tokens_in": tokens_in, "tokens_out": last.tokens_out,
            "docs_removed": docs_in - last.docs_out, "tokens_removed": tokens_in - last.tokens_out,
            "pct_docs_removed": _pct(docs_in - last.docs_out, docs_in),
            "pct_tokens_removed": _pct(tokens_in - last.tokens_out, tokens_in),
            "seconds": self.seconds,
        }

    def to_json(self) -> dict[str, Any]:
        for s in self.stages:
            s.check()
        return {
            "version": STATS_VERSION, "run_id": self.run_id, "token_unit": TOKEN_UNIT,
            "config_sha256": self.config_sha256, "config": self.config,
            "stages": [s.to_json() for s in self.stages], "totals": self.totals(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunStats":
        stages = []
        for s in d["stages"]:
            s = {k: v for k, v in s.items() if k not in ("tokens_removed", "tokens_edited")}
            st = StageStats(**s)
            st.check()
            stages.append(st)
        return cls(run_id=d["run_id"], config_sha256=d["config_sha256"], config=d.get("config", {}),
                   stages=stages, seconds=d.get("totals", {}).get("seconds", 0.0))


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def removal_table_rows(stats: RunStats) -> list[tuple[str, str, str, str, str]]:
    """(Stage, Method, Docs removed, Tokens removed, % of input) — the article's removal table,
    where % is tokens removed by the stage over the run's input tokens."""
    total_tokens = stats.stages[0].tokens_in if stats.stages else 0
    rows = []
    for s in stats.stages:
        rows.append((s.name, s.method, f"{s.docs_removed:,}", f"{s.tokens_removed:,}",
                     f"{_pct(s.tokens_removed, total_tokens):.2f}%"))
    t = stats.totals()
    if t:
        rows.append(("total", "", f"{t['docs_removed']:,}", f"{t['tokens_removed']:,}",
                     f"{t['pct_tokens_removed']:.2f}%"))
    return rows


REMOVAL_TABLE_HEADER = ("Stage", "Method", "Docs removed", "Tokens removed", "% of input")
