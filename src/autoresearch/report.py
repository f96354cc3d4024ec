"""Summaries, the status table, the progress chart and the run's page, all from ledger records.

Pure readers: they take the experiment records (oldest first, as `Ledger.experiments()` returns
them) and never touch git or the loop; the page also reads runs/<id>/ for diffs and logs.
matplotlib and Optuna are imported only when needed, so `autoresearch status` stays fast.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .record import ADVANCES_BEST, FAILED, STATUS_STYLE

# Statuses that ran and produced no usable metric: drawn as red crosses at the chart's edge.
_FAILED = FAILED
_MAX_LABEL = 48


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: Any, spec: str = ".6g") -> str:
    return format(x, spec) if _finite(x) else "-"


def _one_line(text: Any, limit: int | None = None) -> str:
    s = " ".join(str(text or "").split())
    if limit and len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s


@dataclass
class Summary:
    experiments: int = 0  # records after the baseline
    counts: dict[str, int] = field(default_factory=dict)
    baseline: float | None = None
    noise: float | None = None
    baseline_runs: int = 0
    best: float | None = None
    best_id: int | None = None
    best_description: str = ""
    improvement: float | None = None  # best - baseline, in the metric's units (sign as measured)
    relative: float | None = None  # improvement / |baseline|
    cost_usd: float = 0.0


def summarize(records: list[dict[str, Any]]) -> Summary:
    """Best so far, counts by status and the change against the baseline."""
    s = Summary()
    counts: Counter[str] = Counter()
    for rec in records:
        status = rec.get("status", "")
        counts[status] += 1
        cost = (rec.get("proposal") or {}).get("cost_usd")
        if _finite(cost):
            s.cost_usd += float(cost)
        if status == "baseline" and s.baseline is None and _finite(rec.get("metric")):
            s.baseline = float(rec["metric"])
            s.noise = rec.get("noise") if _finite(rec.get("noise")) else None
            s.baseline_runs = len(rec.get("runs") or [])
        if status in ADVANCES_BEST and _finite(rec.get("metric")):
            s.best, s.best_id = float(rec["metric"]), rec.get("id")
            s.best_description = str(rec.get("description", ""))
    s.counts = dict(counts)
    s.experiments = sum(n for st, n in counts.items() if st != "baseline")
    if s.baseline is not None and s.best is not None:
        s.improvement = s.best - s.baseline
        s.relative = s.improvement / abs(s.baseline) if s.baseline else None
    return s


def _count_text(counts: dict[str, int]) -> str:
    order = [st for st in STATUS_STYLE if st != "baseline" and counts.get(st)]
    order += sorted(st for st in counts if st not in STATUS_STYLE and counts[st])
    return ", ".join(f"{counts[st]} {st}" for st in order) or "none yet"


def summary_lines(records: list[dict[str, Any]], header: dict[str, Any] | None = None) -> list[str]:
    """A few plain lines: what the run is, baseline and best, counts by status, cost."""
    header = header or {}
    s = summarize(records)
    metric = header.get("metric", "metric")
    goal = header.get("goal", "minimize")
    lines = []
    if header.get("tag"):
        lines.append(f"run {header['tag']} on {header.get('branch', '')}: {metric} ({goal})".rstrip())
    if s.baseline is None:
        lines.append("baseline: not measured yet")
    else:
        noise = f" ± {s.noise:.3g}" if s.noise else ""
        runs = f" ({s.baseline_runs} runs)" if s.baseline_runs > 1 else ""
        lines.append(f"baseline: {metric} {s.baseline:.6g}{noise}{runs}")
        if s.best is not None and s.best_id not in (None, 0) and s.improvement is not None:
            rel = f", {s.relative:+.2%}" if s.relative is not None else ""
            lines.append(
                f"best:     {metric} {s.best:.6g} ({s.improvement:+.4g}{rel}) at experiment {s.best_id}: "
                f"{_one_line(s.best_description, 80)}"
            )
        else:
            lines.append("best:     the baseline (no kept improvement yet)")
    lines.append(f"experiments: {s.experiments} ({_count_text(s.counts)})")
    flagged = [r.get("id") for r in records if "suspicious" in (r.get("flags") or [])]
    if flagged:
        lines.append(f"flagged:  {len(flagged)} implausibly large gains, re-run before judging "
                     f"(experiments {', '.join(map(str, flagged[-10:]))}; marked '!'); check with `autoresearch verify --rerun-ids`")
    if s.cost_usd:
        lines.append(f"proposer cost: ${s.cost_usd:.2f}")
    return lines


def status_table(records: list[dict[str, Any]], metric_name: str = "metric", last: int | None = None) -> Any:
    """A rich Table of the experiments given (or of the LAST of them): id, status, metric, delta, description."""
    from rich.table import Table
    from rich.text import Text

    rows = records[-last:] if last else records
    cells = []
    for rec in rows:
        delta = rec.get("delta")
        flagged = "suspicious" in (rec.get("flags") or []) and rec.get("status") != "suspicious"
        cells.append((str(rec.get("id", "")), str(rec.get("status", "")) + ("!" if flagged else ""), _fmt(rec.get("metric")),
                      _fmt(delta, "+.4g") if _finite(delta) else "", _one_line(rec.get("description", ""), 200)))
    heads = ("#", "status", metric_name, "delta")

    def fit(i: int) -> int:
        return max([len(heads[i])] + [len(c[i]) for c in cells])

    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    table.add_column("#", justify="right", no_wrap=True, min_width=fit(0))
    table.add_column("status", no_wrap=True, min_width=fit(1))
    table.add_column(metric_name, justify="right", no_wrap=True, min_width=fit(2))
    table.add_column("delta", justify="right", no_wrap=True, min_width=fit(3))
    # Wrappable as a column, so rich narrows it first when space is short; each cell is a one-line
    # Text cut with an ellipsis, so an experiment stays one row.
    table.add_column("description", overflow="ellipsis", min_width=10)
    for (rid, status, metric, delta, description) in cells:
        style = STATUS_STYLE.get(status.rstrip("!"), ("", ""))[0]
        table.add_row(rid, Text(status, style=style), metric, delta, Text(description, no_wrap=True, overflow="ellipsis"))
    return table


# ---- the progress chart --------------------------------------------------------------------------


def _view_limits(values: list[float], band: tuple[float, float] | None, maximize: bool,
                 others: list[float] = ()) -> tuple[float, float]:
    """Y range that shows the baseline band, every kept point and the near misses (`others` that
    landed on the better side of them, within their span: wins too small to keep); far-off
    discards are drawn clipped at the edge rather than squashing the interesting part."""
    core = list(values)
    if band:
        core += list(band)
    lo, hi = min(core), max(core)
    reach = max(hi - lo, abs(hi) * 0.01)
    if maximize:
        near = [v for v in others if hi < v <= hi + reach]
    else:
        near = [v for v in others if lo - reach <= v < lo]
    lo, hi = min([lo, *near]), max([hi, *near])
    if hi == lo:  # only the baseline, without noise: centre it
        half = abs(hi) * 0.05 or 0.5
        return lo - half, hi + half
    span = hi - lo
    # Leave room on the "worse" side for discards that landed there.
    if maximize:
        return lo - 0.6 * span, hi + 0.1 * span
    return lo - 0.1 * span, hi + 0.6 * span


def _render_png(records: list[dict[str, Any]], metric_name: str, goal: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    del plt  # Figure() directly: no global pyplot state, safe to call repeatedly
    maximize = goal == "maximize"
    s = summarize(records)
    fig = Figure(figsize=(14, 7), dpi=110)
    ax = fig.add_subplot(1, 1, 1)

    ids = [r.get("id", i) for i, r in enumerate(records)]
    last_id = max(ids) if ids else 0
    kept = [r for r in records if r.get("status") == "keep" and _finite(r.get("metric"))]
    measured = [r for r in records if r.get("status") not in ADVANCES_BEST and _finite(r.get("metric"))]
    failed = [r for r in records if r.get("status") in _FAILED and not _finite(r.get("metric"))]

    band = None
    if s.baseline is not None:
        width = 2 * (s.noise or 0.0)
        band = (s.baseline - width, s.baseline + width)
    anchor_values = [float(r["metric"]) for r in kept]
    if s.baseline is not None:
        anchor_values.append(s.baseline)
    if not anchor_values:
        anchor_values = [float(r["metric"]) for r in measured] or [0.0, 1.0]
    ylo, yhi = _view_limits(anchor_values, band, maximize, [float(r["metric"]) for r in measured])
    x_hi = max(last_id, 1) + 0.8

    if band is not None:
        if band[1] > band[0]:
            ax.axhspan(band[0], band[1], color="#1f6feb", alpha=0.10, lw=0, zorder=0)
        ax.axhline(s.baseline, color="#1f6feb", lw=1.0, ls="--", alpha=0.7, zorder=1)

    # Discarded and other measured-but-not-kept experiments: faint; those off the view sit on its edge.
    inside = [r for r in measured if ylo <= r["metric"] <= yhi]
    outside = [r for r in measured if not ylo <= r["metric"] <= yhi]
    ax.scatter([r["id"] for r in inside], [r["metric"] for r in inside], s=22, color="#8c959f", alpha=0.55,
               lw=0, zorder=2)
    edge_lo, edge_hi = ylo + 0.012 * (yhi - ylo), yhi - 0.012 * (yhi - ylo)
    for side, edge, marker in ((lambda v: v > yhi, edge_hi, "^"), (lambda v: v < ylo, edge_lo, "v")):
        off = [r["id"] for r in outside if side(r["metric"])]  # the marker points the way the value lies
        if off:
            ax.scatter(off, [edge] * len(off), s=26, marker=marker, color="#8c959f", alpha=0.45, lw=0, zorder=2,
                       clip_on=False)

    # Running best as a step line from the baseline through every keep to the last experiment.
    steps_x, steps_y = [], []
    for r in records:
        if r.get("status") in ADVANCES_BEST and _finite(r.get("metric")):
            steps_x.append(r["id"])
            steps_y.append(float(r["metric"]))
    if steps_x:
        steps_x.append(max(last_id, steps_x[-1]) + 0.5)
        steps_y.append(steps_y[-1])
        ax.step(steps_x, steps_y, where="post", color="#1a7f37", lw=2.0, alpha=0.85, zorder=3)

    base_rec = next((r for r in records if r.get("status") == "baseline" and _finite(r.get("metric"))), None)
    if base_rec is not None:
        ax.scatter([base_rec.get("id", 0)], [base_rec["metric"]], s=70, color="#1f6feb", edgecolor="white",
                   lw=1.2, zorder=5)

    ax.scatter([r["id"] for r in kept], [r["metric"] for r in kept], s=70, color="#2da44e", edgecolor="#116329",
               lw=1.2, zorder=5)
    x_span = x_hi + 0.8
    for r in kept:
        label = _one_line(r.get("description", ""), _MAX_LABEL)
        if "suspicious" in (r.get("flags") or []):
            label = "(!) " + label  # an implausibly large gain that survived its re-run
        # Labels lean towards the worse side of the chart, where the view leaves room for them; near the
        # right edge they point left so they are not cut off.
        up = 1 if not maximize else -1
        left = (r["id"] + 0.8) / x_span > 0.72
        ax.annotate(label, (r["id"], r["metric"]), xytext=(-7 if left else 7, 6 * up), textcoords="offset points",
                    fontsize=8, color="#116329", rotation=(-25 if left else 25) * up, rotation_mode="anchor",
                    ha="right" if left else "left", va="center", zorder=6)

    if failed:
        from matplotlib.transforms import blended_transform_factory

        trans = blended_transform_factory(ax.transData, ax.transAxes)
        y_edge = 0.97 if not maximize else 0.03
        ax.scatter([r["id"] for r in failed], [y_edge] * len(failed), transform=trans, marker="x", s=40,
                   color="#cf222e", lw=1.6, zorder=4, clip_on=False)

    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.8, x_hi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("experiment #")
    arrow = "higher is better" if maximize else "lower is better"
    ax.set_ylabel(f"{metric_name} ({arrow})")
    ax.grid(True, color="#d0d7de", lw=0.6, alpha=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    n_keep = len(kept)
    title = f"autoresearch progress: {s.experiments} experiments, {n_keep} kept improvement{'s' if n_keep != 1 else ''}"
    ax.set_title(title, fontsize=13, loc="left", pad=22)
    if s.baseline is not None and s.best is not None:
        sub = f"{metric_name}: baseline {s.baseline:.5g}"
        if s.noise:
            sub += f" ± {s.noise:.2g} (std)"
        sub += f"  →  best {s.best:.5g}"
        if s.relative is not None and s.best_id not in (None, 0):
            sub += f"  ({s.relative:+.1%})"
        ax.text(0.0, 1.015, sub, transform=ax.transAxes, fontsize=9.5, color="#57606a", ha="left", va="bottom")
    elif not records:
        ax.text(0.5, 0.5, "no experiments yet", transform=ax.transAxes, ha="center", va="center", color="#57606a")

    handles = [
        Line2D([], [], marker="o", ls="", color="#8c959f", alpha=0.6, label="discarded"),
        Line2D([], [], marker="o", ls="", color="#2da44e", markeredgecolor="#116329", label="kept"),
        Line2D([], [], color="#1a7f37", lw=2, label="running best"),
    ]
    if base_rec is not None:
        handles.insert(0, Line2D([], [], marker="o", ls="", color="#1f6feb", label="baseline"))
        if band is not None and band[1] > band[0]:
            handles.append(Patch(color="#1f6feb", alpha=0.15, label="baseline ± 2·noise"))
    if failed:
        handles.append(Line2D([], [], marker="x", ls="", color="#cf222e", lw=1.6, label="crash / timeout"))
    ax.legend(handles=handles, loc="upper left" if maximize else "lower left", fontsize=8.5, frameon=True,
              framealpha=0.9, edgecolor="#d0d7de")

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_progress_png(records: list[dict[str, Any]], metric_name: str, goal: str, path: Path) -> Path:
    """Draw every experiment (kept ones labelled), the running best and the baseline's noise band."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_render_png(records, metric_name, goal))
    tmp.replace(path)
    return path


# ---- the page: the static report and the live dashboard ---------------------------------------------
# One page for both: the records travel as JSON inside it and static/report.js draws everything, so
# `autoresearch report` (details embedded, one file) and `autoresearch dashboard` (details fetched,
# new records pushed) cannot drift apart. No network: the script and styles are inlined.

_STATIC = Path(__file__).with_name("static")
DIFF_LIMIT = 100_000  # bytes of a diff shown; a huge generated diff would bloat a shared report
LOG_LINES = 60
# Building an Optuna trial costs ~0.2 ms; the latest 2,000 say which knobs matter now, in under 0.5 s.
IMPORTANCE_TRIALS = 2000
_RUN_KEYS = ("seed", "exit_code", "wall_s", "peak_rss_mb", "peak_vram_mb", "timed_out", "metrics")


def _clean(value: Any) -> Any:
    """JSON without NaN or infinities (the browser's JSON.parse rejects them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def knob_values(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The full knob vector of a `tune` experiment: its parent's values with the proposal's on top."""
    proposal = rec.get("proposal") or {}
    if not isinstance(proposal.get("params"), dict):
        return None
    full = dict(proposal.get("base") or {}) if isinstance(proposal.get("base"), dict) else {}
    full.update(proposal["params"])
    return full


def page_record(rec: dict[str, Any]) -> dict[str, Any]:
    """What the page needs of one record: everything a reader looks at, none of the hashes."""
    proposal = rec.get("proposal") or {}
    out = {
        "id": rec.get("id"), "status": rec.get("status", ""), "metric": rec.get("metric"), "delta": rec.get("delta"),
        "best": rec.get("best"), "description": str(rec.get("description", "")), "reason": str(rec.get("reason", "")),
        "proposer": rec.get("proposer", ""), "commit": rec.get("commit"), "parent": rec.get("parent"),
        "flags": rec.get("flags") or [], "noise": rec.get("noise"), "noise_used": rec.get("noise_used"),
        "min_delta": rec.get("min_delta_used"), "cost": proposal.get("cost_usd"), "start": rec.get("start"),
        "end": rec.get("end"), "runs": [{k: r.get(k) for k in _RUN_KEYS} for r in rec.get("runs") or [] if isinstance(r, dict)],
    }
    params = knob_values(rec)
    if params is not None:
        out["params"] = params
    if rec.get("log_tail"):
        out["log_tail"] = str(rec["log_tail"])[-4000:]
    return out


def experiment_files(state_dir: Path, exp_id: int, log_lines: int = LOG_LINES) -> dict[str, Any]:
    """The diff and the tails of the logs of one experiment, read from runs/<id>/ (read only)."""
    run_dir = Path(state_dir) / "runs" / str(int(exp_id))
    out: dict[str, Any] = {"diff": "", "logs": []}
    patch = run_dir / "diff.patch"
    if patch.is_file():
        with open(patch, "rb") as fh:
            data = fh.read(DIFF_LIMIT + 1)
        out["diff"] = data[:DIFF_LIMIT].decode("utf-8", errors="replace")
        if len(data) > DIFF_LIMIT:
            out["diff"] += f"\n… (cut at {DIFF_LIMIT} bytes; the whole patch is {patch})"
    if run_dir.is_dir():
        for log in sorted(run_dir.glob("*.log"), key=lambda p: (not p.name.startswith("run"), p.name))[:6]:
            tail = _tail(log, log_lines)
            out["logs"].append({"name": log.name, "lines": len(tail), "tail": "\n".join(tail)})
    return out


def _tail(path: Path, lines: int) -> list[str]:
    # Logs can be megabytes: read only the end.
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 200 * lines))
        data = fh.read()
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:] if size <= 200 * lines else text[1:][-lines:]


def _params_of(rec: dict[str, Any]) -> dict[str, Any] | None:
    # A ledger record carries its knobs in `proposal`; a page record (page_record) has them merged.
    return rec["params"] if isinstance(rec.get("params"), dict) else knob_values(rec)


def param_importances(records: list[dict[str, Any]], goal: str = "minimize") -> dict[str, Any] | None:
    """Which knobs mattered: Optuna's parameter importances over an in-memory study built from the
    latest IMPORTANCE_TRIALS measured `tune` experiments (ledger or page records). None when the run
    has no knob values; a note when too few to tell."""
    rows = [(_params_of(r), float(r["metric"])) for r in records
            if r.get("status") != "baseline" and _finite(r.get("metric")) and _params_of(r)]
    if not rows:
        return None
    rows = rows[-IMPORTANCE_TRIALS:]
    import warnings

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, Any] = {}
    for key in sorted({k for params, _ in rows for k in params}):
        values = [p[key] for p, _ in rows if key in p]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if numbers and min(values) < max(values):
            lo, hi = min(values), max(values)
            if all(isinstance(v, int) for v in values):
                dists[key] = IntDistribution(int(lo), int(hi))
            else:
                dists[key] = FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo >= 100)
        elif not numbers and len({str(v) for v in values}) > 1:
            dists[key] = CategoricalDistribution(sorted({str(v) for v in values}))
    if not dists:
        return {"method": "", "importances": {}, "trials": len(rows), "note": "every knob kept one value so far"}
    trials = []
    for params, value in rows:
        ps = {k: (str(params[k]) if isinstance(dists[k], CategoricalDistribution) else params[k]) for k in dists if k in params}
        trials.append(optuna.trial.create_trial(params=ps, distributions={k: dists[k] for k in ps}, value=value))
    # PED-ANOVA, not Optuna's default fANOVA: fANOVA took 10 s for 300 trials here (and needs
    # scikit-learn), PED-ANOVA 0.3 s for 10,000 with numpy alone. It scores how much each knob decides
    # whether an experiment lands among the best 10%.
    evaluator, method = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if goal == "maximize" else "minimize")
    study.add_trials(trials)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return {"method": method, "importances": {}, "trials": len(rows), "note": f"not enough to tell yet ({err})"}
    return {"method": method, "importances": {k: float(v) for k, v in imp.items() if math.isfinite(v)}, "trials": len(rows)}


def page_json(payload: Any) -> str:
    """JSON the browser can parse: NaN and infinities become null (cleaned only when present: it is slow)."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_clean(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _for_script(text: str) -> str:
    # Inside <script>, "</script>" or "<!--" in a description must not end the block.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(records: list[dict[str, Any]], header: dict[str, Any] | None, *, live: bool = False, offset: int = 0,
                details: dict[int, dict[str, Any]] | None = None, importances: dict[str, Any] | None = None,
                records_json: list[str] | None = None, holdout: list[str] | None = None) -> str:
    """The whole page as one HTML string: inline styles, script and data; nothing fetched from elsewhere.
    `records_json`, each page record as JSON already, stands in for `records` (the dashboard keeps them).
    `holdout`: the lines of holdout.gain_lines (validation gain beside holdout gain), shown under the summary."""
    header = header or {}
    title = f"autoresearch {'dashboard' if live else 'report'}: {header.get('tag', '')}".rstrip(": ")
    meta = {"title": title, "tag": header.get("tag", ""), "branch": header.get("branch", ""),
            "metric": str(header.get("metric", "metric")), "goal": str(header.get("goal", "minimize")), "live": live,
            "offset": offset, "colors": {st: css for st, (_, css) in STATUS_STYLE.items()}}
    payload: dict[str, Any] = {"meta": meta, "importances": importances}
    if details is not None:
        payload["details"] = {str(k): v for k, v in details.items()}
    if records_json is None:
        records_json = [page_json(page_record(r)) for r in records]
    data = '{"records":[' + ",".join(records_json) + "]," + page_json(payload)[1:]
    css = (_STATIC / "report.css").read_text(encoding="utf-8")
    js = (_STATIC / "report.js").read_text(encoding="utf-8")
    e = html.escape
    state = '<span id="live" class="off">● connecting</span>' if live else ""
    held = holdout_section(holdout)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{e(title)}</title><style>{css}</style></head>
<body>
<h1>{e(title)}{state}</h1>
<ul class="summary" id="summary"></ul>
{held}<noscript><p>This page draws its chart and tables with JavaScript; `autoresearch status` and `log` show the same in a terminal.</p></noscript>
<section id="chart" class="card"><h3 id="chart-title"></h3><div id="chart-sub" class="muted"></div>
<svg id="chart-svg" role="img" aria-label="progress chart: {e(meta['metric'])} per experiment"></svg>
<div class="legend"><span><i style="background:#1f6feb"></i>baseline</span><span><i style="background:#8c959f"></i>discarded</span>
<span><i style="background:#2da44e"></i>kept</span><span><i style="background:#1a7f37;border-radius:0;height:3px"></i>running best</span>
<span><i style="background:#1f6feb;opacity:.25;border-radius:0"></i>baseline ± 2·noise</span>
<span><i style="border-top:2px dotted #1a7f37;border-radius:0;height:0"></i>keep threshold</span>
<span style="color:#cf222e">✕ crash / timeout</span></div></section>
<div class="cols">
<section id="lineage"><h2>lineage of kept commits</h2><ol id="lineage-list"></ol></section>
<section id="knobs" hidden><h2>which knobs mattered</h2><div id="importance"></div><div class="slices" id="slices"></div></section>
</div>
<section id="experiments"><h2>experiments</h2>
<div class="filters"><span id="chips"></span><input id="search" type="search" placeholder="search descriptions and reasons">
<span id="shown" class="muted"></span></div>
<table><thead><tr><th>#</th><th>status</th><th>{e(meta['metric'])}</th><th>delta</th><th>description / reason</th><th>repeats</th>
<th>wall s</th><th>proposer</th><th>commit</th></tr></thead><tbody id="rows"></tbody></table>
<button id="more" hidden>show more</button></section>
<aside id="detail" hidden></aside>
<script type="application/json" id="data">{_for_script(data)}</script>
<script>{js}</script>
</body></html>
"""


def holdout_section(lines: list[str] | None) -> str:
    """The holdout lines as a card of the page (empty without them); an overfit verdict stands out."""
    if not lines:
        return ""
    rows = []
    for line in lines:
        text = html.escape(line.strip())
        rows.append(f'<p style="margin:.2em 0;color:#cf222e"><strong>{text}</strong></p>' if "OVERFIT" in line
                    else f'<p style="margin:.2em 0">{text}</p>')
    return ('<section id="holdout" class="card"><h3>validation vs holdout</h3>' + "".join(rows) + "</section>\n")


def write_report_html(records: list[dict[str, Any]], header: dict[str, Any] | None, path: Path,
                      state_dir: Path | None = None, holdout: list[str] | None = None) -> Path:
    """The page as one self-contained file: every record, and (given the run's state folder) each
    experiment's diff and log tails, so the file alone can be shared and opened offline. HOLDOUT:
    the lines that compare the validation gain with the holdout gain (holdout.gain_lines)."""
    header = header or {}
    details = None
    if state_dir is not None:
        details = {r["id"]: experiment_files(state_dir, r["id"], log_lines=40) for r in records if isinstance(r.get("id"), int)}
    page = render_page(records, header, details=details if details is not None else {},
                       importances=param_importances(records, str(header.get("goal", "minimize"))), holdout=holdout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
