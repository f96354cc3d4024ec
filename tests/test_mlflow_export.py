"""`export --mlflow`: every experiment as an MLflow run in a real local store, read back with MLflow's client."""

from __future__ import annotations

from pathlib import Path

import pytest


from builders import assert_clean_exit, build_run, open_session
from conftest import cli, make_experiment


@pytest.mark.slow  # mlflow alone takes ~10 s to import
def test_every_experiment_becomes_an_mlflow_run_with_params_metrics_status_and_diff(tmp_path):
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="needs the mlflow extra")
    root = tmp_path / "exp"
    build_run(root)
    res = cli("export", root, "--mlflow", timeout=300)
    assert_clean_exit(res, 0)
    db = root / ".autoresearch" / "mlflow" / "mlflow.db"
    assert db.is_file() and "logged 4 experiments" in res.stdout and str(db) in res.stdout
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp, = [e for e in client.search_experiments() if e.name != "Default"]
    assert exp.name.startswith("autoresearch/") and exp.tags["autoresearch.metric"] == "score"
    runs = {int(r.data.tags["autoresearch.id"]): r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [0, 1, 2, 3]
    assert [runs[i].data.tags["status"] for i in range(4)] == ["baseline", "keep", "discard", "crash"]
    assert runs[0].data.params == {"description": "baseline"}
    assert runs[1].data.params == {"X": "2.0"} and runs[2].data.params == {"X": "2.5"}
    assert runs[1].data.metrics["score"] == pytest.approx(1.0005) and runs[1].data.metrics["delta"] == pytest.approx(-3.0)
    assert "score" not in runs[3].data.metrics  # a crash has no metric, and says why in a tag
    assert "SyntaxError" in runs[3].data.tags["autoresearch.reason"] and runs[3].info.status == "FAILED"
    assert runs[1].info.status == "FINISHED" and runs[1].data.tags["autoresearch.commit"]
    repeats = client.get_metric_history(runs[0].info.run_id, "repeat/score")
    assert [m.step for m in repeats] == [0, 1]  # the baseline's two seeded repeats
    names = {a.path for a in client.list_artifacts(runs[2].info.run_id)}
    assert names == {"diff.patch", "run.log"}
    diff = Path(client.download_artifacts(runs[2].info.run_id, "diff.patch", str(tmp_path / "dl"))).read_text()
    assert "+X = 2.5" in diff
    # Again: nothing twice.
    again = cli("export", root, "--mlflow", timeout=300)
    assert_clean_exit(again, 0)
    assert "logged 0 experiments" in again.stdout and "4 were already there" in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 4


def test_without_mlflow_installed_the_export_names_the_extra(tmp_path):
    root = tmp_path / "exp"
    make_experiment(root)
    open_session(root).measure_baseline()
    blocked = tmp_path / "blocked" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("mlflow is not installed here")\n')
    res = cli("export", root, "--mlflow", env={"PYTHONPATH": str(blocked.parent)})
    assert_clean_exit(res, 2)
    assert 'pip install "autoresearch[mlflow]"' in res.stderr
