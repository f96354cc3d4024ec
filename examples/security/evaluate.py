"""The protected scorer: bandit's findings in the candidate's bottle.py, weighted by severity.

Reads $AUTORESEARCH_ARTIFACTS/bottle.py (copied there by snapshot.py: `evaluate` sees only the
protected files) and runs bandit on it with this folder's bandit.yaml and --ignore-nosec, so a
`# nosec` comment or a configuration of the candidate's own silences nothing. Prints

    METRIC findings=<weighted sum>   the score (minimize): high x 10 + medium x 3 + low x 1 + hidden x 10
    METRIC high=.. medium=.. low=..  bandit's counts by severity (every confidence level)
    METRIC hidden=N                  new uses of the constructs that hide a call from bandit
                                     (getattr with a literal name, __import__, importlib, builtins)
                                     beyond the released file's (pristine.json), each scored as a high

A file bandit cannot parse is an error (exit 1), never zero findings.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from prepare import HIDING, hiding_counts

WEIGHTS = {"HIGH": 10, "MEDIUM": 3, "LOW": 1}
HIDDEN_WEIGHT = WEIGHTS["HIGH"]
HERE = Path(__file__).resolve().parent


def main() -> None:
    target = Path(os.environ.get("AUTORESEARCH_ARTIFACTS", "")) / "bottle.py"
    if not target.is_file():
        sys.exit(f"evaluate.py: {target} is missing; `run` (snapshot.py) copies bottle.py there")
    try:
        import bandit  # noqa: F401  (only to say what is missing)
    except ImportError:
        sys.exit("evaluate.py: bandit is not installed; pip install 'autoresearch[security]' (bandit==1.9.4)")
    cmd = [sys.executable, "-m", "bandit", "-c", str(HERE / "bandit.yaml"), "--ignore-nosec",
           "--severity-level", "all", "--confidence-level", "all", "-f", "json", "-q", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        sys.exit(f"evaluate.py: bandit gave no report (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    if report.get("errors") or done.returncode not in (0, 1):
        sys.exit(f"evaluate.py: bandit could not scan bottle.py: {report.get('errors') or done.stderr.strip()[-300:]}")

    counts = {level: 0 for level in WEIGHTS}
    for r in sorted(report["results"], key=lambda r: r["line_number"]):
        counts[r["issue_severity"]] = counts.get(r["issue_severity"], 0) + 1
        print(f"{r['issue_severity']:<6} {r['test_id']} line {r['line_number']}: {r['issue_text']}")

    pristine = json.loads((HERE / "pristine.json").read_text(encoding="utf-8"))["hiding"]
    now = hiding_counts(ast.parse(target.read_text(encoding="utf-8")))
    hidden = 0
    for name in HIDING:
        extra = now[name] - pristine.get(name, 0)
        if extra > 0:
            hidden += extra
            print(f"HIDING {name}: {now[name]} uses, the released file has {pristine.get(name, 0)}")

    findings = sum(WEIGHTS[level] * counts[level] for level in WEIGHTS) + HIDDEN_WEIGHT * hidden
    print(f"METRIC high={counts['HIGH']}")
    print(f"METRIC medium={counts['MEDIUM']}")
    print(f"METRIC low={counts['LOW']}")
    print(f"METRIC hidden={hidden}")
    print(f"METRIC findings={findings}")


if __name__ == "__main__":
    main()
