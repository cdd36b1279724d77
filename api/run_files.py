"""What the service makes of a run's records for its pages: losses as JSON-safe numbers, curves
thinned to a drawable size. Reading the files themselves: `contract.jsonl`."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> float | None:
    """A loss as a JSON-safe number: None for NaN/inf (a diverged run) and for non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def thin(points: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most `max_points` evenly spaced points, the last one always kept."""
    if len(points) <= max_points:
        return points
    stride = -(-len(points) // max_points)
    kept = points[::stride]
    if kept[-1] is not points[-1]:
        kept = kept[:-1] + [points[-1]] if len(kept) == max_points else kept + [points[-1]]
    return kept
