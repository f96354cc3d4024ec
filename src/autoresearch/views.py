"""Read-only views of a run: status, log, show, report (the dashboard is dashboard.py). They never touch git or the loop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import UserError
from .ledger import Ledger, chain_head_line
from .workspace import STATE_DIR


def _ledger(root: Path) -> Ledger:
    state = Path(root) / STATE_DIR
    ledger = Ledger(state)
    if not ledger.path.exists():
        raise UserError(f"{ledger.path} not found; start a run with `autoresearch run {root}`")
    ledger.load()
    return ledger


def _num(value: Any, spec: str = ".6g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def print_log(root: Path, status_filter: str | None = None) -> None:
    ledger = _ledger(root)
    out = sys.stdout
    lines = []
    for rec in ledger.experiments():
        if status_filter and rec.get("status") != status_filter:
            continue
        delta = rec.get("delta")
        lines.append(
            f"{rec['id']:>5}  {(rec.get('commit') or '-------')[:7]}  {rec.get('status', ''):<11} "
            f"{_num(rec.get('metric')):>12}  {(_num(delta, '+.4g') if delta is not None else ''):>10}  "
            f"{' '.join(str(rec.get('description', '')).split())}\n"
        )
    out.write("".join(lines))


def print_experiment(root: Path, exp_id: int, lines: int = 30, holdout: bool = False) -> None:
    """HOLDOUT: also its holdout score; off by default, so that what a proposer reads (drive's `show`) never has it."""
    ledger = _ledger(root)
    exps = ledger.experiments()
    if not 0 <= exp_id < len(exps):
        raise UserError(f"no experiment {exp_id} in {ledger.path} (there are {len(exps)}: 0..{len(exps) - 1})")
    rec = exps[exp_id]
    run_dir = ledger.path.parent / "runs" / str(exp_id)
    w = sys.stdout.write
    w(f"experiment {exp_id}: {rec['status']} — {rec.get('reason', '')}\n")
    w(f"description: {rec.get('description', '')}\n")
    w(f"proposer:    {rec.get('proposer', '')}\n")
    w(f"commit:      {rec.get('commit')} (parent {rec.get('parent')})\n")
    w(f"metric:      {_num(rec.get('metric'))}  delta {_num(rec.get('delta'), '+.4g')}  best after {_num(rec.get('best'))}\n")
    if rec.get("flags"):
        w(f"flags:       {', '.join(rec['flags'])}\n")
    from .holdout import holdout_records

    held = holdout_records(ledger.records()).get(exp_id) if holdout else None
    if held is not None:
        shown = _num(held.get("metric")) if held.get("status") == "ok" else f"not scored ({held.get('reason', '')})"
        w(f"holdout:     {shown}  (validation {_num(held.get('validation_metric'))}; never used to keep or discard)\n")
    for i, run in enumerate(rec.get("runs", []), 1):
        w(f"run {i}: seed {run.get('seed')} exit {run.get('exit_code')} wall {_num(run.get('wall_s'), '.1f')}s "
          f"peak {_num(run.get('peak_rss_mb'), '.0f')} MB\n")
        for name, value in sorted((run.get("metrics") or {}).items()):
            w(f"    {name}: {value}\n")
    cost = (rec.get("proposal") or {}).get("cost_usd")
    if cost:
        w(f"proposer cost: ${cost:.4f}\n")
    patch = run_dir / "diff.patch"
    if patch.exists() and patch.stat().st_size:
        w("\n--- diff ---\n")
        w(patch.read_text(encoding="utf-8", errors="replace"))
    log = run_dir / "run.log"
    if log.exists():
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        w(f"\n--- {log} (last {len(tail)} lines) ---\n")
        w("\n".join(tail) + "\n")
    elif rec.get("log_tail"):
        w("\n--- log tail ---\n" + rec["log_tail"] + "\n")


def print_status(root: Path, last: int = 10, holdout: bool = False) -> None:
    """HOLDOUT: also the validation gain beside the holdout gain; off by default, so that what a
    proposer reads (drive's `status`, the MCP tool) never has it: the holdout never steers the search."""
    from rich.console import Console

    from .holdout import gain_lines
    from .report import status_table, summary_lines

    ledger = _ledger(root)
    header = ledger.header() or {}
    exps = ledger.experiments()
    console = Console(highlight=False, soft_wrap=True)
    for line in summary_lines(exps, header):
        console.print(line, markup=False)
    if exps and holdout:
        for line in gain_lines(ledger.records()):  # validation gain beside holdout gain
            console.print(line, markup=False)
    console.print(chain_head_line(ledger.state_dir), markup=False)  # what a user notes to detect rewrites later
    if exps:
        console.print(status_table(exps[-last:], header.get("metric", "metric")))


def write_report(root: Path) -> list[str]:
    from .holdout import gain_lines
    from .report import write_progress_png, write_report_html

    ledger = _ledger(root)
    header = ledger.header() or {}
    exps = ledger.experiments()
    png = ledger.path.parent / "progress.png"
    html = ledger.path.parent / "report.html"
    holdout = gain_lines(ledger.records()) if exps else []
    write_progress_png(exps, header.get("metric", "metric"), header.get("goal", "minimize"), png)
    write_report_html(exps, header, html, state_dir=ledger.state_dir, holdout=holdout)
    return [f"wrote {png}", f"wrote {html}", *holdout]
