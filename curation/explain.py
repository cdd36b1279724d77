"""Why is a document gone? Look it up in a finished run's output.

`explain(output, doc_id)` answers from `rejects/` (stage, reason, detail) and, when the detail
names the copy that was kept (`kept_id`), fetches that copy's text from `data/` (or from
`rejects/`, if a later stage dropped it too). Only the matching rows are read: the lookup is a
filtered scan of the Parquet files, not a load of the run.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from contract.stores import filesystem_for


def _dataset(output: str, sub: str) -> pads.Dataset | None:
    fs, root = filesystem_for(output)
    path = root.rstrip("/") + "/" + sub

    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(path)) if i.path.endswith(".parquet")]
    if not files:
        return None
    return pads.dataset(sorted(files), filesystem=fs, format="parquet")


def _find(ds: pads.Dataset | None, doc_id: str, columns: list[str]) -> list[dict[str, Any]]:
    if ds is None:
        return []
    cols = [c for c in columns if c in ds.schema.names]
    return ds.to_table(columns=cols, filter=pc.field("id") == doc_id).to_pylist()


def explain(output: str, doc_id: str) -> dict[str, Any]:
    """{"id", "status": kept|rejected|unknown, ...}; rejected adds stage, reason, detail, text, kept."""
    data, rejects = _dataset(output, "data"), _dataset(output, "rejects")
    kept = _find(data, doc_id, ["id", "domain", "source", "text"])
    if kept:
        return {"id": doc_id, "status": "kept", "document": kept[0]}
    rows = _find(rejects, doc_id, ["id", "stage", "reason", "detail", "domain", "source", "n_tokens", "text"])
    if not rows:
        return {"id": doc_id, "status": "unknown"}
    row = rows[0]
    detail = json.loads(row.pop("detail") or "{}")
    answer = {"id": doc_id, "status": "rejected", **row, "detail": detail}
    kept_id = detail.get("kept_id")
    if kept_id:
        twin = _find(data, kept_id, ["id", "domain", "source", "text"])
        if twin:
            answer["kept"] = {**twin[0], "status": "kept"}
        else:
            later = _find(rejects, kept_id, ["id", "stage", "reason", "text"])
            answer["kept"] = {**later[0], "status": "rejected"} if later else {"id": kept_id, "status": "unknown"}
    return answer
