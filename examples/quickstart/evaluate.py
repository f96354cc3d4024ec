"""Scores the predictions train.py saved. Protected: the metric comes only from this file.

Reads $AUTORESEARCH_ARTIFACTS/predictions.npy (one prediction per validation example) and prints
the mean squared error on the held-out validation set as `val_loss: X`.

With --holdout (the harness runs it on each kept winner's saved artifacts, never to decide a keep)
it scores holdout_predictions.npy on the holdout split instead, printed as `METRIC val_loss=X`.
"""

import os
import sys
from pathlib import Path

import numpy as np

from prepare import load_holdout_targets, load_val_targets

holdout = "--holdout" in sys.argv[1:]
artifacts = Path(os.environ.get("AUTORESEARCH_ARTIFACTS", "artifacts"))
path = artifacts / ("holdout_predictions.npy" if holdout else "predictions.npy")
split = "holdout" if holdout else "validation"
if not path.is_file():
    sys.exit(f"evaluate.py: {path} not found; train.py must save its {split} predictions there")
pred = np.load(path).astype(np.float64).reshape(-1)
try:
    target = load_holdout_targets() if holdout else load_val_targets()
except FileNotFoundError as err:
    sys.exit(f"evaluate.py: {err}")
if pred.shape != target.shape:
    sys.exit(f"evaluate.py: expected {target.shape[0]} {split} predictions, got {pred.shape[0]}")
if not np.all(np.isfinite(pred)):
    sys.exit(f"evaluate.py: {split} predictions contain NaN or infinity")
loss = float(np.mean((pred - target) ** 2))
if holdout:
    print(f"holdout_loss: {loss:.6f}")
    print(f"METRIC val_loss={loss:.6f}")
else:
    print(f"val_loss: {loss:.6f}")
