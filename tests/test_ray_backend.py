"""The Ray backend on a real local cluster of two nodes on 127.0.0.1: trials placed by Ray, one
node killed mid-experiment, and still one record per experiment, intact."""

from __future__ import annotations

import threading
import time

import pytest

from builders import assert_intact, records
from conftest import make_experiment

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')

TRAIN = '''\
import os, time
X = 3.0
time.sleep(float(os.environ.get("AUTORESEARCH_BUDGET_S", "1")))
print(f"score: {(X - 1.0) ** 2}")
print(f"node: {os.environ.get('RAY_NODE_MARK', 'head')}")
'''


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_loop_across_two_ray_nodes_survives_losing_one(tmp_path):
    from ray.cluster_utils import Cluster

    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress

    root = make_experiment(tmp_path / "exp", train=TRAIN, budget="3s", timeout="60s", baseline_runs=1)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1, env_vars={"RAY_NODE_MARK": "second"})
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
        run_loop(root, max_experiments=0, progress=Progress(quiet=True))  # the baseline, on this machine

        killed = []

        def kill_second_node_mid_experiment():
            pending = root / ".autoresearch" / "pending"
            deadline = time.monotonic() + 240
            # Two experiments landed (one on each node), then two more running: kill one node now.
            while time.monotonic() < deadline and len(records(root)) < 3:
                time.sleep(0.1)
            while time.monotonic() < deadline and len(list(pending.glob("*.json")) if pending.is_dir() else []) < 2:
                time.sleep(0.1)
            time.sleep(1.0)  # both tasks running
            cluster.remove_node(second, allow_graceful=False)
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill_second_node_mid_experiment, daemon=True)
        killer.start()
        summary = run_loop(root, max_experiments=6, progress=Progress(quiet=True),
                           resources={"workers": 2, "backend": "ray", "cpus_per_worker": 1})
        killer.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    exps = records(root)
    ids = [r["id"] for r in exps]
    assert sorted(ids) == list(range(len(ids))) and len(set(ids)) == len(ids)  # none lost, none twice
    assert summary.experiments == 6
    statuses = [r["status"] for r in exps[1:]]
    assert killed, "the second node was never killed"
    assert all(s in ("keep", "discard", "conflict", "interrupted") for s in statuses), statuses
    nodes = {run.get("node") for r in exps[1:] for run in r["runs"]}
    assert len(nodes - {None}) == 2, nodes  # Ray placed trials on both nodes
    assert_intact(root)
