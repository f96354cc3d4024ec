"""Scores the predictions train.py saved. Protected: the metric comes only from this file.

Reads $AUTORESEARCH_ARTIFACTS/predictions.npy (one prediction per validation example) and prints
the mean squared error on the held-out validation set as `val_loss: X`.
"""

import os
import sys
from pathlib import Path

import numpy as np

from prepare import load_val_targets

artifacts = Path(os.environ.get("AUTORESEARCH_ARTIFACTS", "artifacts"))
path = artifacts / "predictions.npy"
if not path.is_file():
    sys.exit(f"evaluate.py: {path} not found; train.py must save its validation predictions there")
pred = np.load(path).astype(np.float64).reshape(-1)
target = load_val_targets()
if pred.shape != target.shape:
    sys.exit(f"evaluate.py: expected {target.shape[0]} predictions, got {pred.shape[0]}")
if not np.all(np.isfinite(pred)):
    sys.exit("evaluate.py: predictions contain NaN or infinity")
print(f"val_loss: {float(np.mean((pred - target) ** 2)):.6f}")
