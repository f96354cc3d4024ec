"""Fixed data for the quickstart experiment. Protected: proposers never change this file.

A synthetic regression task with a known, nonlinear answer: 8 input features, of which 5 matter,
plus Gaussian label noise. The split is fixed by DATA_SEED, so every experiment sees the same
training set and is scored on the same held-out validation set; only the model's own randomness
(AUTORESEARCH_SEED) varies between runs.
"""

import numpy as np

DATA_SEED = 1234
N_TRAIN = 512
N_VAL = 2048
N_FEATURES = 8
LABEL_NOISE = 0.1
# The training budget, counted in examples seen (steps * batch size), so that a bigger batch buys
# fewer steps, as a fixed wall-clock budget would, but without depending on the machine's speed.
TRAIN_EXAMPLES = 64_000


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
