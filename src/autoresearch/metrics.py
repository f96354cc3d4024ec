"""Reading numbers out of an experiment's output.

Three forms, last one wins: `name: value` lines (the original autoresearch summary block),
`METRIC name=value` lines, and `$AUTORESEARCH_ARTIFACTS/metrics.json` (a flat object of numbers).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
_COLON_LINE = re.compile(rf"^\s*([A-Za-z_][\w.\-/]*)\s*:\s*({_NUMBER})\s*$", re.IGNORECASE)
_METRIC_LINE = re.compile(rf"^\s*METRIC\s+([A-Za-z_][\w.\-/]*)\s*=\s*({_NUMBER})\s*$", re.IGNORECASE)


def parse_text(text: str) -> dict[str, float]:
    """Every `name: number` and `METRIC name=number` line, in order; a later line overrides an earlier one."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_LINE.match(line) or _COLON_LINE.match(line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def parse_metrics_json(path: Path) -> dict[str, float]:
    """Numbers from a metrics.json object; anything that is not a flat number is ignored."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[str(key)] = float(value)
        elif isinstance(value, str):
            try:
                out[str(key)] = float(value)
            except ValueError:
                pass
    return out


def collect(text: str, artifacts: Path | None) -> dict[str, float]:
    """All metrics of one process: its output first, then metrics.json on top."""
    metrics = parse_text(text)
    if artifacts is not None and (Path(artifacts) / "metrics.json").is_file():
        metrics.update(parse_metrics_json(Path(artifacts) / "metrics.json"))
    return metrics


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def jsonable(metrics: dict[str, float]) -> dict[str, float | str]:
    """JSON has no NaN/inf: store them as strings so the ledger stays canonical."""
    return {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
