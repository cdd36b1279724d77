"""`exact_dedup`: one record per normalised dedup text, within each kind.

The key is the pretraining stage's (`curation.stages.exact_dedup`: NFKC, case, whitespace, a
128-bit hash). The keeper of a group is its eval-split record if it has one, else the smallest
id; the others are dropped as `exact_duplicate` with the stage's detail (kept_id, text_hash,
group_size).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from curation.posttrain.config import ExactParams
from curation.posttrain.rows import SPLIT_RANK, Verdict
from curation.stages.exact_dedup import ExactDedup, normalize_text

NAME = "exact_dedup"
METHOD = ExactDedup.method
REASON = ExactDedup.reason  # "exact_duplicate"


def text_hash(text: str, p: ExactParams) -> str:
    return hashlib.blake2b(normalize_text(text, p).encode(), digest_size=16).hexdigest()


def exact_dedup(verdicts: list[Verdict], p: ExactParams) -> list[Verdict]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, v in enumerate(verdicts):
        groups[(v.row.kind, text_hash(v.row.text, p))].append(i)
    out = list(verdicts)
    for (_, key), members in groups.items():
        if len(members) < 2:
            continue
        keeper = min(members, key=lambda i: (SPLIT_RANK[verdicts[i].row.split], verdicts[i].row.id))
        for i in members:
            if i != keeper:
                out[i] = Verdict(verdicts[i].row, REASON, {"kept_id": verdicts[keeper].row.id,
                                                           ExactDedup.key_name: key, "group_size": len(members)})
    return out
