"""Progress chart, HTML report, status table and summary from synthetic ledger records."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
from rich.console import Console

from autoresearch.report import (param_importances, status_table, summarize, summary_lines, write_progress_png,
                                 write_report_html)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = {"tag": "nov26", "branch": "autoresearch/nov26", "metric": "val_loss", "goal": "minimize"}


def rec(i: int, status: str, metric: float | None, description: str = "", **extra) -> dict:
    return {"kind": "experiment", "id": i, "status": status, "metric": metric, "description": description or f"change {i}",
            "proposer": "tune", "commit": f"{i:040x}", "reason": f"reason {i}", "delta": None, **extra}


def full_run() -> list[dict]:
    records = [rec(0, "baseline", 1.0, "baseline", noise=0.02, runs=[{}, {}, {}])]
    best = 1.0
    for i in range(1, 30):
        if i in (4, 11, 19):
            best -= 0.1
            records.append(rec(i, "keep", best, f"LEARNING_RATE 0.{i} -> 0.{i + 1}, a <long> & 'quoted' description that goes on", delta=-0.1))
        elif i in (7, 23):
            records.append(rec(i, "crash", None, log_tail="Traceback..."))
        elif i == 15:
            records.append(rec(i, "timeout", None))
        elif i == 16:
            records.append(rec(i, "invalid", None))
        else:
            records.append(rec(i, "discard", best + 0.05 * (i % 5) + (5.0 if i == 9 else 0.0), delta=0.05))
    records[5]["proposal"] = {"cost_usd": 0.25}
    return records


CASES = {
    "full": full_run(),
    "no_keeps": [rec(0, "baseline", 2.0, noise=0.1)] + [rec(i, "discard", 2.0 + i / 10) for i in range(1, 6)],
    "only_baseline": [rec(0, "baseline", 0.5, noise=0.0)],
    "baseline_without_noise": [rec(0, "baseline", 0.5)] + [rec(1, "crash", None)],
    "all_crashes": [rec(0, "baseline", 3.0, noise=0.01)] + [rec(i, "crash", None) for i in range(1, 4)],
    "empty": [],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_progress_png_is_a_valid_image(tmp_path, case, goal):
    from matplotlib.image import imread

    path = write_progress_png(CASES[case], "val_loss", goal, tmp_path / "out" / "progress.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    img = imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert not (tmp_path / "out" / "progress.png.tmp").exists()


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_chart_shows_near_misses_better_than_the_best(goal):
    """A discard just past the best (a win too small to keep) is in view; a wild one is clipped."""
    from autoresearch.report import _view_limits

    s = 1 if goal == "minimize" else -1  # maximizing: the same run mirrored
    kept, band = [s * 2.38, s * 2.36], sorted([s * 2.365, s * 2.395])
    near, wild, worse = s * 2.357, s * 1.36, s * 2.88
    lo, hi = _view_limits(kept, tuple(band), goal == "maximize", [near, wild, worse])
    assert lo < near < hi
    assert not lo <= wild <= hi and not lo <= worse <= hi


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert m, "the page carries its records as JSON"
    return json.loads(m.group(1))


def test_report_html_is_self_contained(tmp_path):
    records = CASES["full"]
    path = write_report_html(records, HEADER, tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    data = page_data(page)
    assert [r["id"] for r in data["records"]] == [r["id"] for r in records]
    assert data["meta"]["live"] is False and data["meta"]["colors"]["keep"] == "#1a7f37"
    assert data["records"][4]["description"].startswith("LEARNING_RATE 0.4 -> 0.5, a <long> & 'quoted'")
    assert "<long>" not in page  # escaped inside the script block, so a description cannot end it
    assert data["records"][5]["cost"] == 0.25
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert "<script src" not in page and "<link href" not in page
    for case in ("only_baseline", "empty"):
        write_report_html(CASES[case], {}, tmp_path / f"{case}.html")


def test_a_description_that_closes_the_script_block_stays_data(tmp_path):
    records = [rec(0, "baseline", 1.0), rec(1, "discard", float("nan"), "</script><script>alert(1)</script> <!--")]
    page = write_report_html(records, HEADER, tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data block's and the page script's, nothing more
    data = page_data(page)
    assert data["records"][1]["description"].startswith("</script>") and data["records"][1]["metric"] is None


def test_which_knobs_mattered_comes_from_optuna_over_the_recorded_params():
    records = [rec(0, "baseline", 1.0)]
    for i in range(1, 40):
        lr, wd = 10 ** (-4 + (i * 7 % 13) / 4), (i * 5 % 11) / 10
        metric = (math.log10(lr) + 2.5) ** 2 + 0.01 * wd  # the learning rate matters, weight decay hardly
        records.append(rec(i, "discard", metric, proposal={"params": {"LR": lr}, "base": {"LR": 1e-3, "WD": wd}}))
    records.append(rec(40, "crash", None, proposal={"params": {"LR": 9.0}}))
    imp = param_importances(records, "minimize")
    assert imp["trials"] == 39 and imp["method"] in ("fANOVA", "PED-ANOVA")
    assert list(imp["importances"]) == ["LR", "WD"] and imp["importances"]["LR"] > imp["importances"]["WD"]
    assert param_importances(CASES["full"], "minimize") is None  # no knob values recorded
    few = param_importances([rec(1, "discard", 1.0, proposal={"params": {"A": 1}})], "minimize")
    assert few["importances"] == {} and few["note"]


def test_summary():
    s = summarize(CASES["full"])
    assert s.baseline == 1.0 and s.noise == 0.02 and s.baseline_runs == 3
    assert s.best == pytest.approx(0.7) and s.best_id == 19
    assert s.improvement == pytest.approx(-0.3) and s.relative == pytest.approx(-0.3)
    assert s.counts == {"baseline": 1, "keep": 3, "crash": 2, "timeout": 1, "invalid": 1, "discard": 22}
    assert s.experiments == 29 and s.cost_usd == 0.25
    lines = summary_lines(CASES["full"], HEADER)
    text = "\n".join(lines)
    assert "run nov26 on autoresearch/nov26: val_loss (minimize)" in text
    assert "baseline: val_loss 1 ± 0.02 (3 runs)" in text
    assert "at experiment 19" in text and "-30.00%" in text
    assert "29 (3 keep, 22 discard, 2 crash, 1 timeout, 1 invalid)" in text
    assert "proposer cost: $0.25" in text
    assert "no kept improvement" in "\n".join(summary_lines(CASES["only_baseline"], HEADER))
    assert "not measured yet" in "\n".join(summary_lines([], HEADER))


def test_status_table_plain_when_piped():
    table = status_table(CASES["full"], "val_loss", last=5)
    assert table.row_count == 5
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False).print(table)
    out = buf.getvalue()
    assert "\x1b[" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert "val_loss" in lines[0] and len(lines) == 6
    assert lines[-1].split()[:2] == ["29", "discard"]
    colored = io.StringIO()
    Console(file=colored, width=120, force_terminal=True, color_system="standard").print(status_table(CASES["full"][:5], "val_loss"))
    assert "\x1b[" in colored.getvalue()
