"""`autoresearch export DIR --mlflow [URI]`: every experiment as an MLflow run, for teams that read MLflow.

One MLflow experiment per run (`autoresearch/<tag>`), one MLflow run per ledger record: params are the
knob values (`tune`) or the description, metrics the primary metric, delta, best, cost and each
repeat's metrics (step = repeat), tags the status, reason, commit and proposer, and the diff and run
log as artifacts. By default the store is a SQLite file under .autoresearch/mlflow/ (MLflow's plain
folder store is in maintenance mode and refuses to start). Exporting again adds only new records.
mlflow is heavy, so it is imported here, lazily, from the `mlflow` extra.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .report import knob_values
from .signing import canonical_json
from .views import _ledger

_FINISHED = {"baseline": "FINISHED", "keep": "FINISHED", "discard": "FINISHED", "interrupted": "KILLED"}
_MAX_PARAM = 6000  # MLflow's limit on a param's value
_MAX_TAG = 5000


@dataclass
class MlflowExport:
    uri: str
    experiment: str
    logged: int
    skipped: int

    def line(self) -> str:
        again = f"; {self.skipped} were already there" if self.skipped else ""
        return f"logged {self.logged} experiments as MLflow runs in '{self.experiment}' at {self.uri}{again}"


def default_store(state_dir: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the local store under .autoresearch/mlflow/."""
    folder = Path(state_dir).resolve() / "mlflow"
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def _store_for(uri: str | None, state_dir: Path) -> tuple[str, str | None]:
    if not uri:
        return default_store(state_dir)
    if "://" not in uri and not uri.startswith(("sqlite:", "file:", "databricks")):  # a plain folder
        folder = Path(uri).resolve()
        return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
    return uri, None


def _ms(stamp: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except ValueError:
        return None


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name))[:250] or "_"


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _record_key(rec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(rec)).hexdigest()


def export_mlflow(root: Path, uri: str | None = None) -> MlflowExport:
    """Log every experiment of the run in ROOT that the store does not hold yet."""
    try:
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError('exporting to MLflow needs the mlflow package; install it with `pip install "autoresearch[mlflow]"`') from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines about creating tables are noise here
    logging.getLogger("alembic").setLevel(logging.WARNING)

    ledger = _ledger(Path(root))
    header = ledger.header() or {}
    state_dir = ledger.state_dir
    tracking_uri, artifacts = _store_for(uri, state_dir)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    name = f"autoresearch/{header.get('tag') or Path(root).resolve().name}"
    metric_name = _metric_key(header.get("metric", "metric"))
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(name)
        exp_id = found.experiment_id if found else client.create_experiment(
            name, artifact_location=artifacts, tags={"autoresearch.branch": str(header.get("branch", "")),
                                                     "autoresearch.metric": str(header.get("metric", "")),
                                                     "autoresearch.goal": str(header.get("goal", ""))})
        done = _exported(client, exp_id)
        logged = skipped = 0
        for rec in ledger.experiments():
            key = _record_key(rec)
            if key in done:
                skipped += 1
                continue
            _log_one(client, exp_id, rec, key, metric_name, state_dir, Metric, Param)
            logged += 1
    except MlflowException as err:
        first = str(err.message if hasattr(err, "message") else err).strip().splitlines()[0]
        raise UserError(f"MLflow at {tracking_uri} refused the export: {first}") from None
    return MlflowExport(tracking_uri, name, logged, skipped)


def _exported(client: Any, exp_id: str) -> set[str]:
    keys, token = set(), None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        keys.update(r.data.tags.get("autoresearch.record_sha256", "") for r in page)
        token = page.token
        if not token:
            return keys


def _log_one(client: Any, exp_id: str, rec: dict[str, Any], key: str, metric_name: str, state_dir: Path,
             Metric: Any, Param: Any) -> None:
    status = str(rec.get("status", ""))
    description = " ".join(str(rec.get("description", "")).split())
    start, end = _ms(rec.get("start")), _ms(rec.get("end"))
    tags = {
        "autoresearch.id": str(rec.get("id")), "autoresearch.status": status, "status": status,
        "autoresearch.reason": str(rec.get("reason", ""))[:_MAX_TAG], "autoresearch.commit": str(rec.get("commit") or ""),
        "autoresearch.parent": str(rec.get("parent") or ""), "autoresearch.proposer": str(rec.get("proposer", "")),
        "autoresearch.flags": ",".join(rec.get("flags") or []), "autoresearch.record_sha256": key,
        "mlflow.note.content": description[:_MAX_TAG],
    }
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"{rec.get('id')} {status}: {description[:60]}")
    run_id, when = run.info.run_id, start or 0
    knobs = knob_values(rec)
    params = {str(k)[:250]: str(v)[:_MAX_PARAM] for k, v in knobs.items()} if knobs else {"description": description[:_MAX_PARAM] or "-"}
    metrics = []
    for name, value in ((metric_name, rec.get("metric")), ("delta", rec.get("delta")), ("best", rec.get("best")),
                        ("cost_usd", (rec.get("proposal") or {}).get("cost_usd")), ("noise", rec.get("noise"))):
        if _num(value) is not None:
            metrics.append(Metric(name, _num(value), when, 0))
    for step, repeat in enumerate(rec.get("runs") or []):
        for name, value in [("wall_s", repeat.get("wall_s")), ("peak_rss_mb", repeat.get("peak_rss_mb")),
                            *sorted((repeat.get("metrics") or {}).items())]:
            if _num(value) is not None:
                metrics.append(Metric(_metric_key(f"repeat/{name}"), _num(value), when, step))
    items = [Param(k, v) for k, v in params.items()]
    for n in range(max(math.ceil(len(items) / 100), math.ceil(len(metrics) / 1000), 1)):  # MLflow's batch limits
        client.log_batch(run_id, metrics=metrics[n * 1000:(n + 1) * 1000], params=items[n * 100:(n + 1) * 100])
    run_dir = Path(state_dir) / "runs" / str(rec.get("id"))
    for name in ("diff.patch", "run.log"):
        if (run_dir / name).is_file() and (run_dir / name).stat().st_size:
            client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id, status=_FINISHED.get(status, "FAILED"), end_time=end)
