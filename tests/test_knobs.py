"""Finding numeric knobs and rewriting only their literals."""

from __future__ import annotations

import ast

import pytest

from autoresearch.knobs import apply_values, find_knobs, find_knobs_in, format_float, format_value, rewrite, same_literal

SOURCE = '''\
"""A training script."""
import os

# ---- hyperparameters ----
MATRIX_LR = 0.04  # learning rate of the matrices
DEPTH: int = 8
TOTAL_BATCH_SIZE = 2 ** 19  # tokens per step
WEIGHT_DECAY = -1e-3
EVAL_TOKENS = 1_000_000
WARMUP = 0.0
SCALE = +2.5
NAME = "gpt"
USE_FLASH = True
BETAS = (0.8, 0.95)
lower_case = 3
A = B = 4
DERIVED = DEPTH * 64
PARENS = (
    7
)
NOTE = "é"; HEADS = 6   # é: a non-ASCII character before the literal on the same line
DEPTH = 4  # the later assignment is the one that runs


def f():
    INNER = 3
    return INNER


if __name__ == "__main__":
    MAIN_ONLY = 5
'''


def test_finds_module_level_numeric_literals_only():
    knobs = {k.name: k for k in find_knobs_in("train.py", SOURCE)}
    assert set(knobs) == {"MATRIX_LR", "DEPTH", "TOTAL_BATCH_SIZE", "WEIGHT_DECAY", "EVAL_TOKENS", "WARMUP", "SCALE",
                          "PARENS", "HEADS"}
    assert knobs["MATRIX_LR"].value == 0.04 and knobs["MATRIX_LR"].type == "float"
    assert knobs["DEPTH"].value == 4 and knobs["DEPTH"].type == "int" and knobs["DEPTH"].line == 22
    assert knobs["TOTAL_BATCH_SIZE"].value == 2**19 and knobs["TOTAL_BATCH_SIZE"].text == "2 ** 19"
    assert knobs["TOTAL_BATCH_SIZE"].power_base == 2
    assert knobs["WEIGHT_DECAY"].value == -1e-3 and knobs["WEIGHT_DECAY"].text == "-1e-3"
    assert knobs["EVAL_TOKENS"].value == 1_000_000
    assert knobs["SCALE"].value == 2.5
    assert knobs["PARENS"].value == 7 and knobs["PARENS"].line == 19
    heads = knobs["HEADS"]
    line = SOURCE.splitlines()[heads.line - 1]
    assert line[heads.col : heads.end_col] == "6"  # character columns, not UTF-8 bytes


def test_rewriting_with_the_same_text_is_the_identity():
    knobs = find_knobs_in("train.py", SOURCE)
    assert rewrite(SOURCE, knobs, {k.key: k.text for k in knobs}) == SOURCE


def test_rewrite_changes_only_the_literals():
    files = {"train.py": SOURCE}
    new = apply_values(files, {"MATRIX_LR": 0.031234, "DEPTH": 16, "TOTAL_BATCH_SIZE": 2**18, "WEIGHT_DECAY": -3.2e-5,
                               "EVAL_TOKENS": 2_500_000, "HEADS": 12})["train.py"]
    old_lines, new_lines = SOURCE.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = {i + 1: (a, b) for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b}
    assert changed == {
        5: ("MATRIX_LR = 0.04  # learning rate of the matrices", "MATRIX_LR = 0.03123  # learning rate of the matrices"),
        7: ("TOTAL_BATCH_SIZE = 2 ** 19  # tokens per step", "TOTAL_BATCH_SIZE = 2 ** 18  # tokens per step"),
        8: ("WEIGHT_DECAY = -1e-3", "WEIGHT_DECAY = -3.2e-5"),
        9: ("EVAL_TOKENS = 1_000_000", "EVAL_TOKENS = 2_500_000"),
        21: ('NOTE = "é"; HEADS = 6   # é: a non-ASCII character before the literal on the same line',
             'NOTE = "é"; HEADS = 12   # é: a non-ASCII character before the literal on the same line'),
        22: ("DEPTH = 4  # the later assignment is the one that runs", "DEPTH = 16  # the later assignment is the one that runs"),
    }
    again = {k.name: k.value for k in find_knobs_in("train.py", new)}
    assert again["MATRIX_LR"] == 0.03123 and again["DEPTH"] == 16 and again["TOTAL_BATCH_SIZE"] == 2**18
    ast.parse(new)


def test_no_op_values_produce_no_edit():
    files = {"train.py": SOURCE}
    assert apply_values(files, {"MATRIX_LR": 0.04, "DEPTH": 4, "TOTAL_BATCH_SIZE": 2**19}) == {}
    with pytest.raises(KeyError):
        apply_values(files, {"NOPE": 1})


def test_keys_are_unique_across_files():
    files = {"a.py": "LR = 0.1\nSTEPS = 10\n", "b.py": "LR = 0.2\n", "notes.txt": "LR = 5\n", "bad.py": "LR = (\n"}
    keys = {k.key: k.value for k in find_knobs(files)}
    assert keys == {"a.py:LR": 0.1, "STEPS": 10, "b.py:LR": 0.2}
    new = apply_values(files, {"b.py:LR": 0.3})
    assert new == {"b.py": "LR = 0.3\n"}


@pytest.mark.parametrize(
    "value, like, text",
    [
        (0.031234, "0.04", "0.03123"),
        (3.0, "0.5", "3.0"),  # a float stays a float
        (123456.7, "1.0", "123500.0"),
        (1.234567e-7, "0.001", "1.235e-7"),
        (3.2e-4, "1e-3", "3.2e-4"),  # scientific notation is kept when the original used it
        (0.05, "1e-3", "0.05"),
        (2.5e7, "1.0", "2.5e7"),
        (-0.5, "-1.0", "-0.5"),
    ],
)
def test_float_formatting(value, like, text):
    assert format_float(value, like) == text
    assert isinstance(ast.literal_eval(text), float)
    assert abs(float(text) - value) <= 1e-3 * abs(value)


def test_int_formatting_keeps_the_style():
    k = {k.name: k for k in find_knobs_in("t.py", "A = 2**10\nB = 1_000\nC = 7\n")}
    assert format_value(2**12, k["A"]) == "2**12"
    assert format_value(1000, k["A"]) == "1000"  # not a power of two: plain
    assert format_value(25_000, k["B"]) == "25_000"
    assert format_value(9, k["C"]) == "9"
    assert same_literal("2**10", "1024") and same_literal("1e-3", "0.001") and not same_literal("1", "1.0")
