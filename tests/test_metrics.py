import json
import math

from autoresearch.metrics import collect, jsonable, parse_text


def test_colon_lines_summary_block():
    text = "step 10 loss 3.2\n---\nval_bpb:          0.997900\ntraining_seconds: 300.1\npeak_vram_mb:     45060.2\n"
    assert parse_text(text) == {"val_bpb": 0.9979, "training_seconds": 300.1, "peak_vram_mb": 45060.2}


def test_metric_lines_and_last_one_wins():
    text = "METRIC throughput=1200\nscore: 5\nMETRIC score=4.5\nnoise: not a number\n"
    assert parse_text(text) == {"throughput": 1200.0, "score": 4.5}


def test_scientific_negative_nan_inf():
    got = parse_text("a: -1.5e-3\nb: nan\nMETRIC c=inf\n")
    assert got["a"] == -0.0015 and math.isnan(got["b"]) and math.isinf(got["c"])


def test_prose_with_colons_is_ignored():
    assert parse_text("Epoch 3: loss 2.0\nTime: 12:30\nhttp://x: 5 apples\n") == {}


def test_metrics_json_overrides_output(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"score": 1.25, "name": "x", "ok": True, "nested": {"a": 1}}))
    assert collect("score: 9\nother: 2\n", tmp_path) == {"score": 1.25, "other": 2.0}


def test_malformed_metrics_json_is_ignored(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    assert collect("score: 9\n", tmp_path) == {"score": 9.0}


def test_jsonable_turns_nonfinite_into_strings():
    assert jsonable({"a": float("nan"), "b": 1.0}) == {"a": "nan", "b": 1.0}
