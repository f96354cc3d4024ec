"""
Scores the model train.py saved, in expected economic cost. Protected: the metric comes only
from this file, on a split that train.py never sees.

    python evaluate.py [ARTIFACTS]              # the validation split: what the loop optimises
    python evaluate.py --holdout [ARTIFACTS]    # the holdout split: scored only for kept winners

ARTIFACTS (default $AUTORESEARCH_ARTIFACTS, else ./artifacts) holds `model.txt`, a LightGBM model
saved with Booster.save_model, and `decision.json`, {"threshold": T}: an example is flagged (a
loan declined, a transaction stopped) when the model's score is >= T. The cost:

    cost = sum over missed positives of their loss  +  false_alarm_cost x number of false alarms

with each positive's loss from prepare.py (credit: 0.75 x the borrower's credit line; card fraud:
the amount) and one fixed false-alarm cost (credit: $320, the margin lost on a good borrower
declined). `expected_cost` is that sum divided by the number of examples scored: the cost per
borrower (or per transaction). Lower is better. Also printed: recall and precision of the flags,
the AUC of the scores, the share flagged, the total, and `savings`, the share of the cost of the
better trivial policy (flag nobody, or flag everybody) that the model saves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from prepare import PrepareError, load_split, manifest, selected_data

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before LightGBM loads OpenMP: spinning threads stall shared cores
for _unused in ("sklearn", "pandas"):  # LightGBM imports them when installed, for wrappers not used here (5 s)
    sys.modules.setdefault(_unused, None)
MODEL_FILE = "model.txt"
DECISION_FILE = "decision.json"


class Rejected(Exception):
    """The saved artifacts cannot be scored; printed as one sentence."""


def decision_cost(y: np.ndarray, flagged: np.ndarray, loss: np.ndarray, false_alarm_cost: float) -> float:
    """Total cost of a set of decisions: each missed positive costs its loss, each false alarm the fixed cost."""
    y, flagged = np.asarray(y).astype(bool), np.asarray(flagged).astype(bool)
    missed = y & ~flagged
    false_alarms = ~y & flagged
    return float(np.sum(np.asarray(loss, dtype=np.float64)[missed]) + false_alarm_cost * np.count_nonzero(false_alarms))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties count half)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(score, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]  # 1-based, averaged over equal scores
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def summary(y: np.ndarray, score: np.ndarray, threshold: float, loss: np.ndarray, false_alarm_cost: float) -> dict:
    """Every number this file prints, for scores `score` flagged at `threshold`."""
    y = np.asarray(y).astype(bool)
    flagged = np.asarray(score) >= threshold
    tp = int(np.count_nonzero(y & flagged))
    total = decision_cost(y, flagged, loss, false_alarm_cost)
    trivial = min(decision_cost(y, np.zeros_like(y), loss, false_alarm_cost),
                  decision_cost(y, np.ones_like(y), loss, false_alarm_cost))
    return {
        "expected_cost": total / len(y),
        "recall": tp / max(1, int(y.sum())),
        "precision": tp / int(flagged.sum()) if flagged.any() else 0.0,
        "auc": auc(y, score),
        "flag_rate": float(flagged.mean()),
        "total_cost": total,
        "savings": 1.0 - total / trivial if trivial > 0 else 0.0,
    }


def load_model(folder: Path, n_features: int):
    import lightgbm as lgb

    model_path, decision_path = folder / MODEL_FILE, folder / DECISION_FILE
    if not model_path.is_file():
        raise Rejected(f"{model_path} not found: train.py must save its LightGBM model there (booster.save_model)")
    try:
        booster = lgb.Booster(model_str=model_path.read_text(encoding="utf-8"))
    except Exception as err:  # LightGBM raises its own error type for a malformed model
        raise Rejected(f"{model_path} is not a LightGBM model ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if booster.num_feature() != n_features:
        raise Rejected(f"the saved model takes {booster.num_feature()} features but the data has {n_features}; "
                       "train on the features prepare.py gives, in their order")
    try:
        threshold = json.loads(decision_path.read_text())["threshold"]
    except (OSError, ValueError, KeyError, TypeError):
        raise Rejected(f"{decision_path} must hold {{\"threshold\": NUMBER}}; train.py writes it beside the model") from None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise Rejected(f"the threshold in {decision_path} must be a finite number, not {threshold!r}")
    return booster, float(threshold)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Score the model train.py saved, in expected cost per example.")
    parser.add_argument("artifacts", nargs="?", help="folder holding model.txt and decision.json "
                                                     "(default: $AUTORESEARCH_ARTIFACTS or ./artifacts)")
    parser.add_argument("--holdout", action="store_true", help="score the holdout split instead of validation")
    parser.add_argument("--data", default=None, help="the data prepare.py prepared (default: $AUTORESEARCH_DATA or credit)")
    args = parser.parse_args(argv)
    folder = Path(args.artifacts or os.environ.get("AUTORESEARCH_ARTIFACTS") or "artifacts")
    data = args.data or selected_data([])
    try:
        split = load_split("holdout" if args.holdout else "val", data)
        false_alarm_cost = float(manifest(data)["false_alarm_cost"])
        booster, threshold = load_model(folder, split.x.shape[1])
        try:
            score = np.asarray(booster.predict(split.x), dtype=np.float64).reshape(len(split.y), -1)
        except Exception as err:
            raise Rejected(f"the saved model failed to predict ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        if score.shape[1] != 1 or not np.all(np.isfinite(score)):
            raise Rejected("the saved model must give one finite score per example")
        result = summary(split.y, score[:, 0], threshold, split.loss, false_alarm_cost)
    except (Rejected, PrepareError) as err:
        print(f"evaluate.py: rejected: {err}", file=sys.stderr, flush=True)
        print(f"rejected: {err}", flush=True)
        return 3
    print(f"split: {'holdout' if args.holdout else 'validation'}, {len(split.y)} examples, threshold {threshold:g}")
    for name, value in result.items():
        print(f"METRIC {name}={value:.6g}" if name != "total_cost" else f"METRIC {name}={value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
