"""
Fraud experiment: gradient-boosted trees (LightGBM) that flag the examples worth stopping.

This is the file a proposer edits. It trains on the training split for at most
AUTORESEARCH_BUDGET_S seconds, then saves the model and its decision threshold into
$AUTORESEARCH_ARTIFACTS; the protected evaluate.py scores them on the validation split in
expected cost per example (lower is better). Run by hand with:

    python prepare.py && python train.py && python evaluate.py

A missed positive costs its own loss (credit: 0.75 x the borrower's credit line), a false alarm a
fixed cost (credit: $320). With those costs the best threshold is far below 0.5, and a model
trained with the costs as weights can afford to be flagged at a higher one.
"""

import json
import os
import sys
import time
from pathlib import Path

# One thread, set before LightGBM loads OpenMP: its threads spin while they wait, and on a shared
# 2-core machine training ran 7x slower with them; on data this small one thread is about as fast.
os.environ["OMP_NUM_THREADS"] = "1"
# LightGBM imports scikit-learn and pandas, when installed, for wrappers this file does not use;
# kept out, it loads in 1 s instead of 6 on a busy machine (delete these lines to use them).
for _unused in ("sklearn", "pandas"):
    sys.modules.setdefault(_unused, None)
import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402

from evaluate import DECISION_FILE, MODEL_FILE, summary  # noqa: E402
from prepare import load_split, manifest  # noqa: E402

# Hyperparameters: the upper-case numbers below are the knobs the `tune` proposer searches.
NUM_LEAVES = 31            # leaves per tree
MAX_DEPTH = 8              # depth limit per tree
LEARNING_RATE = 0.05       # shrinkage per boosting round
ROUNDS = 300               # boosting rounds (fewer when the time budget runs out first)
MIN_CHILD_SAMPLES = 50     # examples a leaf needs at least
FEATURE_FRACTION = 0.8     # share of the features each tree may use
BAGGING_FRACTION = 0.8     # share of the rows each round trains on
LAMBDA_L2 = 1.0            # L2 penalty on leaf values
POS_WEIGHT = 1.0           # extra weight on every positive example
COST_WEIGHT = 0.0          # 0: all examples weigh alike; 1: each weighs what an error on it costs
THRESHOLD = 0.05           # flag an example when its predicted score is at least this

monitor_share = 0.2        # of the training split, held out to report train_cost while training
report_every = 0.1         # report train_cost this often, as a share of the rounds

t0 = time.time()
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
budget = float(os.environ.get("AUTORESEARCH_BUDGET_S", "60"))

data = load_split("train")
false_alarm_cost = float(manifest()["false_alarm_cost"])
rng = np.random.default_rng(seed)
monitor = rng.random(len(data.y)) < monitor_share
fit = ~monitor

# Example weights: positives up by POS_WEIGHT, then blended towards each example's cost of error
# (its loss if it is a positive, the false-alarm cost if not), scaled to a mean of 1.
cost_of_error = np.where(data.y == 1, data.loss, false_alarm_cost)
weight = np.where(data.y == 1, POS_WEIGHT, 1.0) * ((1 - COST_WEIGHT) + COST_WEIGHT * cost_of_error / cost_of_error.mean())

params = {
    "objective": "binary",
    "num_leaves": NUM_LEAVES,
    "max_depth": MAX_DEPTH,
    "learning_rate": LEARNING_RATE,
    "min_child_samples": MIN_CHILD_SAMPLES,
    "feature_fraction": FEATURE_FRACTION,
    "bagging_fraction": BAGGING_FRACTION,
    "bagging_freq": 1,
    "lambda_l2": LAMBDA_L2,
    "seed": seed,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 1,
    "verbosity": -1,
}
train_set = lgb.Dataset(data.x[fit], label=data.y[fit], weight=weight[fit])
booster = lgb.Booster(params=params, train_set=train_set)


def monitor_summary() -> dict:
    score = booster.predict(data.x[monitor])
    return summary(data.y[monitor], score, THRESHOLD, data.loss[monitor], false_alarm_cost)


t_train = time.time()
every = max(1, round(ROUNDS * report_every))
rounds = 0
for rounds in range(1, ROUNDS + 1):
    booster.update()
    elapsed = time.time() - t0  # the budget counts from the start, data loading included
    out_of_time = elapsed >= budget
    if rounds % every == 0 or rounds == ROUNDS or out_of_time:
        progress = max(rounds / ROUNDS, min(1.0, elapsed / budget))
        print(f"METRIC train_cost={monitor_summary()['expected_cost']:.4f} progress={progress:.3f}", flush=True)
    if out_of_time:
        print(f"budget of {budget:g}s spent after {rounds} of {ROUNDS} rounds")
        break
t_trained = time.time()  # boosting ends here; scoring and saving the model come after

result = monitor_summary()
artifacts = Path(os.environ.get("AUTORESEARCH_ARTIFACTS", "artifacts"))
artifacts.mkdir(parents=True, exist_ok=True)
booster.save_model(str(artifacts / MODEL_FILE))
(artifacts / DECISION_FILE).write_text(json.dumps({"threshold": THRESHOLD}))

print("---")
print(f"train_cost:       {result['expected_cost']:.4f}")  # per example, on the monitor share of the training split
print(f"train_recall:     {result['recall']:.4f}")
print(f"train_auc:        {result['auc']:.4f}")
print(f"rounds:           {rounds}")
print(f"training_seconds: {t_trained - t_train:.2f}")
print(f"total_seconds:    {time.time() - t0:.2f}")
