"""Many experiments at once: worker slots with their own checkouts and cores, one coordinator that
records and keeps, winners replayed onto a best that moved, nothing lost when the harness dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from autoresearch.config import ResourcesConfig
from autoresearch.errors import UserError
from autoresearch.loop import Session, propose
from autoresearch.workers import Coordinator, plan_slots

from builders import Scripted, assert_intact, edit, open_session, records
from conftest import cli, make_experiment

# Two knobs on two lines, so two changes can merge; each run sleeps SLEEP seconds.
TRAIN = '''\
import os, time
X = 3.0
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
extra = float(os.environ.get("EXTRA_SLEEP", "0"))
Y = 3.0
extra += 0.0
SLEEP = 0.3
time.sleep(extra + SLEEP)
print(f"score: {(X - 1.0) ** 2 + (Y - 1.0) ** 2 + 0.001 * seed}")
print(f"cores: {len(os.sched_getaffinity(0))}")
print(f"threads: {os.environ.get('OMP_NUM_THREADS', '0')}")
'''


def coordinate(s: Session, proposals: list, workers: int = 2) -> list[dict]:
    landed: list[dict] = []
    slots = plan_slots(ResourcesConfig(workers=workers), s.ws.state, cores=[0, 1], gpus=[])
    prop = Scripted(s.config, proposals)
    Coordinator(s, prop, slots, lambda n: n < len(proposals), propose, on_record=landed.append).run()
    return landed


def test_slots_split_the_cores_and_gpus_and_refuse_to_share_a_gpu_unasked(tmp_path):
    slots = plan_slots(ResourcesConfig(workers=2), tmp_path, cores=[0, 1, 2, 3], gpus=["0", "1"])
    assert [s.cpus for s in slots] == [[0, 1], [2, 3]]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    assert all(s.env["OMP_NUM_THREADS"] == "2" for s in slots)
    assert slots[0].checkout != slots[1].checkout and slots[0].scratch != slots[1].scratch
    with pytest.raises(UserError, match="4 workers but 2 GPU"):
        plan_slots(ResourcesConfig(workers=4), tmp_path, cores=[0, 1, 2, 3], gpus=["0", "1"])
    shared = plan_slots(ResourcesConfig(workers=4, gpus_per_worker=0), tmp_path, cores=[0, 1, 2, 3], gpus=["0", "1"])
    assert all("CUDA_VISIBLE_DEVICES" not in s.env for s in shared)  # asked for: they share
    with pytest.raises(UserError, match="needs 4 GPUs"):
        plan_slots(ResourcesConfig(workers=2, gpus_per_worker=2), tmp_path, cores=[0, 1], gpus=["0"])


def test_two_workers_run_at_once_each_on_its_own_core_and_the_record_holds(tmp_path):
    root = make_experiment(tmp_path / "exp", train=TRAIN)
    s = open_session(root)
    s.measure_baseline()
    landed = coordinate(s, [edit(SLEEP=1.0, X=5.0), edit(SLEEP=1.0, Y=5.0), edit(SLEEP=1.0, X=4.0), edit(SLEEP=1.0, Y=4.0)])
    assert sorted(r["id"] for r in landed) == [1, 2, 3, 4]
    exps = records(root)[1:]
    spans = [(datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])) for r in exps]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # they overlapped
    workers = {run["worker"] for r in exps for run in r["runs"]}
    assert workers == {"w0", "w1"}
    for r in exps:
        for run in r["runs"]:
            assert run["metrics"]["cores"] == 1 and run["metrics"]["threads"] == 1 and len(run["cpus"]) == 1
    assert all(r["measured_against"] == 0 for r in exps)
    assert_intact(root)


def test_a_winner_whose_best_moved_is_replayed_onto_the_new_best_and_run_again(tmp_path):
    root = make_experiment(tmp_path / "exp", train=TRAIN)
    s = open_session(root)
    s.measure_baseline()
    # X wins first (fast); Y wins too but lands later, on a best that has moved: its change is
    # merged onto the new best and measured there before it is kept.
    landed = coordinate(s, [edit(X=1.0), edit(Y=1.0, SLEEP=1.2)])
    by_id = {r["id"]: r for r in landed}
    first, second = by_id[1], by_id[2]
    assert first["status"] == "keep"
    assert second["status"] == "keep", second["reason"]
    assert second["parent"] == first["commit"] and second["measured_against"] == 1
    assert second["replayed"][0]["measured_against"] == 0 and second["replayed"][0]["runs"]
    assert second["proposal"]["replayed_from"] == second["replayed"][0]["commit"]
    assert second["metric"] == pytest.approx(0.0, abs=0.01)  # both changes, measured together
    assert (root / ".autoresearch" / "runs" / "2" / "replay-1" / "run.log").is_file()
    assert s.ws.branch_head(s.tag) == second["commit"]
    assert_intact(root)


def test_a_winner_whose_change_no_longer_applies_is_a_conflict_and_never_kept(tmp_path):
    root = make_experiment(tmp_path / "exp", train=TRAIN)
    s = open_session(root)
    s.measure_baseline()
    landed = coordinate(s, [edit(X=1.0), edit(X=1.2, SLEEP=1.2)])
    by_id = {r["id"]: r for r in landed}
    assert by_id[1]["status"] == "keep"
    assert by_id[2]["status"] == "conflict" and "no longer applies" in by_id[2]["reason"]
    assert s.ws.branch_head(s.tag) == by_id[1]["commit"]
    assert_intact(root)


def test_a_result_that_arrives_twice_is_recorded_once(tmp_path):
    root = make_experiment(tmp_path / "exp", train=TRAIN)
    s = open_session(root)
    s.measure_baseline()
    got = s.ws.write_edits({"train.py": TRAIN.replace("X = 3.0", "X = 2.0")}, ["train.py"])
    cand = s.ws.commit_candidate("X -> 2", got)
    s.ws.reset()
    exp = s.begin(cand, description="X -> 2", proposer="scripted", proposal={})
    while (spec := exp.next_trial()) is not None:
        exp.absorb(s.run_trial(s.trials, spec, s.main_slot()))
    first = s.conclude(exp, keep_checkout=s.ws.worktree)
    again = s.conclude(exp, keep_checkout=s.ws.worktree)  # say, a retried task delivering its result again
    assert again == first and [r["id"] for r in records(root)] == [0, 1]
    assert_intact(root)


def _slow_experiment(root: Path) -> Path:
    make_experiment(root, train=TRAIN.replace("SLEEP = 0.3", "SLEEP = 0.2"), baseline_runs=1)
    return root


def test_sigkill_with_four_workers_loses_nothing(tmp_path):
    """The harness is killed while four experiments run: on resume each is recorded `interrupted`,
    the orphaned processes are gone, verify passes and the branch is the last kept record."""
    root = _slow_experiment(tmp_path / "e")
    env = {**os.environ, "EXTRA_SLEEP": "0"}
    first = cli("run", root, "-n", "0", env=env)  # the baseline
    assert first.returncode == 0, first.stderr
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", str(root), "-n", "12", "--workers", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**env, "EXTRA_SLEEP": "30"})
    pending = root / ".autoresearch" / "pending"
    deadline = time.monotonic() + 90
    pgids: list[int] = []
    while time.monotonic() < deadline:
        intents = [json.loads(p.read_text()) for p in pending.glob("*.json")] if pending.is_dir() else []
        pgids = [i["pgid"] for i in intents if i.get("pgid")]
        if len(pgids) == 4:
            break
        time.sleep(0.1)
    assert len(pgids) == 4, "four experiments never ran at once"
    proc.kill()
    proc.wait()
    res = cli("run", root, "-n", "0", env=env)
    assert res.returncode == 0, res.stderr
    from autoresearch.runner import group_alive

    assert not any(group_alive(p) for p in pgids)
    exps = records(root)
    assert sorted(r["id"] for r in exps) == list(range(5))
    assert [r["status"] for r in exps[1:]] == ["interrupted"] * 4
    assert not list(pending.glob("*.json"))
    assert cli("verify", root).returncode == 0
    kept = [r for r in exps if r["status"] in ("baseline", "keep")]
    s = Session(root)
    s.open()
    assert s.ws.branch_head(s.tag) == kept[-1]["commit"]


def test_ctrl_c_with_workers_records_every_running_experiment_as_interrupted(tmp_path):
    root = _slow_experiment(tmp_path / "e")
    assert cli("run", root, "-n", "0").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", str(root), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "EXTRA_SLEEP": "30"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pending = root / ".autoresearch" / "pending"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if pending.is_dir() and sum(bool(json.loads(p.read_text()).get("pgid")) for p in pending.glob("*.json")) == 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    exps = records(root)
    assert sorted(r["status"] for r in exps[1:]) == ["interrupted", "interrupted"], out
    assert all("Ctrl-C" in r["reason"] for r in exps[1:])
    assert not list(pending.glob("*.json"))
    assert cli("verify", root).returncode == 0


@pytest.mark.slow  # 16 s: four confined agent runs
def test_with_workers_each_worker_runs_its_own_agent_in_its_own_checkout(tmp_path):
    """The `agent` proposer takes minutes in a checkout: with two workers, two agents write their
    changes at the same time, each in its worker's agent checkout, from the best when it began."""
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress

    agent = tmp_path / "agentbin" / "agent.py"
    agent.parent.mkdir()
    agent.write_text(
        "import os, re, sys, time\nfrom pathlib import Path\n"
        "prompt = Path(sys.argv[1]).read_text()\n"
        "n = int(re.search(r'Make experiment #(\\d+)', prompt).group(1))\n"
        "print(f'AGENT {n} start {time.time()} {os.getcwd()}', flush=True)\n"
        "time.sleep(1.0)\n"
        "text = Path('train.py').read_text()\n"
        "Path('train.py').write_text(re.sub(r'^Y = .*$', f'Y = {1.0 + 0.1 * n}', text, flags=re.M))\n"
        "print(f'AGENT {n} end {time.time()}')\n"
        "print(f'DESCRIPTION: Y -> {1.0 + 0.1 * n}')\n")
    root = make_experiment(tmp_path / "exp", train=TRAIN)
    toml = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(toml + f'''
[proposer]
kind = "agent"
command = "{sys.executable} {agent} {{prompt_file}}"
agent_timeout = "60s"
agent_paths = ["{agent.parent}"]
''')
    from conftest import git

    git(root, "commit", "-qam", "agent proposer")
    summary = run_loop(root, max_experiments=4, progress=Progress(quiet=True), resources={"workers": 2})
    assert summary.experiments == 4
    exps = records(root)
    assert sorted(r["id"] for r in exps) == [0, 1, 2, 3, 4]
    assert all(r["proposer"] == "agent" and r["status"] in ("keep", "discard", "conflict") for r in exps[1:]), exps
    lines = [line.split()[1:] for out in (root / ".autoresearch" / "runs").glob("*/agent.stdout")
             for line in out.read_text().splitlines() if line.startswith("AGENT ")]
    starts = {int(n): float(t) for n, what, t, *_ in lines if what == "start"}
    ends = {int(n): float(t) for n, what, t, *_ in lines if what == "end"}
    assert any(starts[a] < ends[b] and starts[b] < ends[a] for a in starts for b in starts if a < b)  # at once
    where = {rest[0] for n, what, t, *rest in lines if what == "start"}
    assert len(where) == 2 and all("/workers/w" in w for w in where)  # each in its worker's own checkout
    assert_intact(root)
