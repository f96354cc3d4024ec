"""Fixed data for the quickstart experiment. Protected: proposers never change this file.

A synthetic regression task with a known, nonlinear answer: 8 input features, of which 5 matter,
plus Gaussian label noise. The split is fixed by DATA_SEED, so every experiment sees the same
training set and is scored on the same held-out validation set; only the model's own randomness
(AUTORESEARCH_SEED) varies between runs.

A third split, the holdout, is never optimised on: the harness scores each kept winner's saved
holdout predictions with `evaluate.py --holdout` (autoresearch.toml `holdout`) to tell a real
gain from one fitted to the validation set's own noise. train.py predicts its inputs; its label
noise comes from the seed in holdout_secret.txt, which is hidden from `run` (`hidden`), so no
train.py can know the holdout's targets, only the task's.
"""

from pathlib import Path

import numpy as np

DATA_SEED = 1234
N_TRAIN = 512
N_VAL = 2048
N_FEATURES = 8
LABEL_NOISE = 0.1
# The training budget, counted in examples seen (steps * batch size), so that a bigger batch buys
# fewer steps, as a fixed wall-clock budget would, but without depending on the machine's speed.
TRAIN_EXAMPLES = 64_000
HOLDOUT_SEED = 4321  # the holdout's inputs; its label noise is seeded by HOLDOUT_SECRET
N_HOLDOUT = 2048
HOLDOUT_SECRET = Path(__file__).with_name("holdout_secret.txt")


def _target(x: np.ndarray) -> np.ndarray:
    return (
        np.sin(2.0 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + 0.5 * np.cos(3.0 * x[:, 3])
        + 0.3 * x[:, 4] ** 2
        - 0.3
    )


def _make() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(DATA_SEED)
    x = rng.standard_normal((N_TRAIN + N_VAL, N_FEATURES))
    y = _target(x) + LABEL_NOISE * rng.standard_normal(N_TRAIN + N_VAL)
    return x, y


def load_train() -> tuple[np.ndarray, np.ndarray]:
    """Training inputs (N_TRAIN, N_FEATURES) and targets (N_TRAIN,)."""
    x, y = _make()
    return x[:N_TRAIN], y[:N_TRAIN]


def load_val_inputs() -> np.ndarray:
    """Validation inputs only: the model predicts these, evaluate.py scores the predictions."""
    x, _ = _make()
    return x[N_TRAIN:]


def load_val_targets() -> np.ndarray:
    _, y = _make()
    return y[N_TRAIN:]


def load_holdout_inputs() -> np.ndarray:
    """Holdout inputs (N_HOLDOUT, N_FEATURES): train.py saves its predictions for these too."""
    return np.random.default_rng(HOLDOUT_SEED).standard_normal((N_HOLDOUT, N_FEATURES))


def load_holdout_targets() -> np.ndarray:
    """For evaluate.py --holdout only: the seed of the label noise is out of `run`'s sight."""
    try:
        seed = int(HOLDOUT_SECRET.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise FileNotFoundError(f"{HOLDOUT_SECRET} is not readable; only `evaluate.py --holdout` reads it") from None
    noise = np.random.default_rng(seed).standard_normal(N_HOLDOUT)
    return _target(load_holdout_inputs()) + LABEL_NOISE * noise
