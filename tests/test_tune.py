"""The `tune` proposer: search ranges, overrides, valid proposals, rebuilding from the ledger."""

from __future__ import annotations

import ast
import hashlib
import json
import math
from pathlib import Path

import pytest

from autoresearch.config import SpaceSpec, parse_config
from autoresearch.errors import ConfigError, ProposalInvalid
from autoresearch.knobs import find_knobs
from autoresearch.proposers import Context, create
from autoresearch.proposers.tune import TuneProposer, build_space, grow

from builders import assert_clean_exit
from conftest import cli, make_experiment

ROOT = Path(__file__).resolve().parents[1]

TRAIN = '''\
import os

# knobs
LEARNING_RATE = 0.01  # step size
HIDDEN = 64
LAYERS = 3
DROPOUT = 0.0
SHIFT = -0.5
TOKENS = 2**16  # per step

print("hello")
'''


def config(space: dict | None = None, seed: int | None = 0, sampler: str = "tpe", goal: str = "minimize"):
    return parse_config(
        {
            "experiment": {"run": "python train.py", "editable": ["train.py"]},
            "metric": {"name": "loss", "goal": goal},
            "proposer": {"kind": "tune", "seed": seed, "sampler": sampler, "space": space or {}},
        },
        Path("autoresearch.toml"),
    )


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def baseline_record(text: str, metric: float = 1.0) -> dict:
    return {"kind": "experiment", "id": 0, "status": "baseline", "metric": metric, "noise": 0.01,
            "parent": sha(text), "commit": sha(text), "proposer": "baseline", "proposal": {}}


def context(cfg, files: dict[str, str], history: list[dict], best: dict, exp_id: int) -> Context:
    return Context(config=cfg, root=Path("."), worktree=Path("."), files=dict(files), history=list(history),
                   best=best, noise=0.01, run_dir=Path("."), experiment_id=exp_id)


def knob_values(text: str) -> dict:
    return {k.key: k.value for k in find_knobs({"train.py": text})}


def test_default_ranges():
    dims = build_space(find_knobs({"train.py": TRAIN}), {})
    lr, hidden, layers, dropout, shift, tokens = (dims[k] for k in ("LEARNING_RATE", "HIDDEN", "LAYERS", "DROPOUT", "SHIFT", "TOKENS"))
    assert (lr.kind, lr.log) == ("float", True) and math.isclose(lr.low, 0.001) and math.isclose(lr.high, 0.1)
    # powers of two stay powers of two: the exponent is searched, x4 each way
    assert (hidden.kind, hidden.low, hidden.high) == ("pow", 4, 8) and hidden.value(8) == 256
    assert (tokens.kind, tokens.low, tokens.high, tokens.base) == ("pow", 14, 18, 2)
    assert (layers.kind, layers.low, layers.high, layers.log) == ("int", 1, 12, True)
    assert (dropout.kind, dropout.low, dropout.high, dropout.log) == ("float", 0.0, 1.0, False)
    # negative floats: log range over the magnitude, sign kept
    assert shift.negate and math.isclose(shift.low, 0.05) and math.isclose(shift.high, 5.0) and shift.value(1.0) == -1.0
    assert shift.param(-0.5) == 0.5 and shift.param(0.5) is None


def test_space_overrides():
    knobs = find_knobs({"train.py": TRAIN})
    space = {
        "LEARNING_RATE": SpaceSpec(low=1e-4, high=1.0),
        "HIDDEN": SpaceSpec(low=16, high=1024),
        "LAYERS": SpaceSpec(choices=[2, 4, 6]),
        "DROPOUT": SpaceSpec(exclude=True),
        "SHIFT": SpaceSpec(low=-2.0, high=2.0),
        "TOKENS": SpaceSpec(high=2**20, log=False),
    }
    dims = build_space(knobs, space)
    assert "DROPOUT" not in dims
    assert (dims["LEARNING_RATE"].low, dims["LEARNING_RATE"].high, dims["LEARNING_RATE"].log) == (1e-4, 1.0, True)
    assert (dims["HIDDEN"].kind, dims["HIDDEN"].low, dims["HIDDEN"].high) == ("pow", 4, 10)
    assert dims["LAYERS"].kind == "choice" and dims["LAYERS"].choices == (2, 4, 6)
    assert (dims["SHIFT"].kind, dims["SHIFT"].log, dims["SHIFT"].negate) == ("float", False, False)
    tokens = dims["TOKENS"]
    assert (tokens.kind, tokens.low, tokens.high) == ("int", 2**14, 2**20)  # log = false: every integer


@pytest.mark.parametrize(
    "space, words",
    [
        ({"NOPE": SpaceSpec(low=1, high=2)}, ["[proposer.space.NOPE]", "names no knob", "LEARNING_RATE"]),
        ({"LEARNING_RATE": SpaceSpec(low=0.5, high=0.1)}, ["[proposer.space.LEARNING_RATE]", "must be below high"]),
        ({"SHIFT": SpaceSpec(low=-1, high=1, log=True)}, ["[proposer.space.SHIFT]", "log = true"]),
        ({"LAYERS": SpaceSpec(choices=["a", "b"])}, ["[proposer.space.LAYERS]", "must be numbers"]),
        ({"HIDDEN": SpaceSpec(low=40, high=60)}, ["[proposer.space.HIDDEN]", "powers of 2"]),
    ],
)
def test_bad_space_is_a_config_error_naming_the_table(space, words):
    with pytest.raises(ConfigError) as err:
        build_space(find_knobs({"train.py": TRAIN}), space)
    msg = str(err.value)
    assert msg.startswith("autoresearch.toml")
    for word in words:
        assert word in msg


def run_synthetic(prop: TuneProposer, cfg, text: str, n: int, score) -> tuple[list[dict], str]:
    """Drive the proposer like the loop does, scoring each candidate with SCORE(values) (None = crash)."""
    files = {"train.py": text}
    base = baseline_record(text, score(knob_values(text)))
    history, best = [base], base
    for i in range(1, n + 1):
        p = prop.propose(context(cfg, files, history, best, i))
        new = p.edits["train.py"]
        metric = score(knob_values(new))
        better = metric is not None and (metric - best["metric"] if cfg.maximize else best["metric"] - metric) > 0.02
        status = "crash" if metric is None else ("keep" if better else "discard")
        rec = {"kind": "experiment", "id": i, "status": status, "metric": metric, "parent": best["commit"],
               "commit": sha(new), "proposer": "tune", "proposal": p.meta, "description": p.description}
        history.append(rec)
        prop.observe(rec)
        if status == "keep":
            files, best = {"train.py": new}, rec
    return history, files["train.py"]


def quadratic(v: dict) -> float | None:
    if v["LEARNING_RATE"] > 0.08:
        return None  # "diverged"
    return (math.log10(v["LEARNING_RATE"]) + 1.5) ** 2 + (math.log2(v["HIDDEN"]) - 7) ** 2 / 4 + 0.1 * v["LAYERS"]


def test_proposals_are_valid_changed_code_within_range():
    cfg = config()
    prop = TuneProposer(cfg, [])
    files = {"train.py": TRAIN}
    base = baseline_record(TRAIN)
    dims = build_space(find_knobs(files), {})
    seen = set()
    for i in range(1, 8):
        p = prop.propose(context(cfg, files, [base], base, i))
        new = p.edits["train.py"]
        ast.parse(new)
        assert new != TRAIN and new not in seen
        seen.add(new)
        # Only the literals changed: the same lines, comments and statements.
        for old_line, new_line in zip(TRAIN.splitlines(), new.splitlines(), strict=True):
            if old_line != new_line:
                name = old_line.split("=")[0].strip()
                assert new_line.startswith(f"{name} = ") and ("#" in old_line) == ("#" in new_line)
        values = knob_values(new)
        for key, dim in dims.items():
            assert dim.param(values[key]) is not None, (key, values[key])
        assert values["HIDDEN"] & (values["HIDDEN"] - 1) == 0
        assert p.meta["params"] == {k: values[k] for k in dims}
        assert p.meta["base"] == knob_values(TRAIN)
        for part in p.description.split(", "):
            name, old, arrow, new_text = part.split(" ")
            assert arrow == "->" and old != new_text and name in dims
        prop.observe({"kind": "experiment", "id": i, "status": "discard", "metric": 2.0 + i, "parent": base["commit"],
                      "commit": sha(new), "proposal": p.meta})


def test_tune_improves_a_synthetic_objective_and_tells_crashes():
    # Fixed ranges: the space never moves, so the study keeps every trial.
    space = {"LEARNING_RATE": SpaceSpec(low=1e-3, high=0.3), "HIDDEN": SpaceSpec(low=16, high=1024),
             "LAYERS": SpaceSpec(low=1, high=8), "DROPOUT": SpaceSpec(exclude=True), "SHIFT": SpaceSpec(exclude=True),
             "TOKENS": SpaceSpec(exclude=True)}
    cfg = config(seed=3, space=space)
    prop = TuneProposer(cfg, [])
    history, best_text = run_synthetic(prop, cfg, TRAIN, 25, quadratic)
    assert any(r["status"] == "keep" for r in history)
    states = [t.state.name for t in prop._study.trials]
    crashes = sum(r["status"] == "crash" for r in history)
    assert crashes and states.count("FAIL") == crashes
    assert states.count("COMPLETE") >= len(history) - crashes  # the baseline and every measured experiment
    assert quadratic(knob_values(best_text)) < quadratic(knob_values(TRAIN))


def test_rebuilds_from_ledger_history_and_never_repeats_it():
    cfg = config(seed=1)
    live = TuneProposer(cfg, [])
    history, best_text = run_synthetic(live, cfg, TRAIN, 12, quadratic)
    # A new proposer (a resumed run) sees the same ledger: every experiment becomes a trial, since
    # the space is fixed at the baseline and only grows.
    resumed = TuneProposer(cfg, history)
    best = [r for r in history if r["status"] in ("baseline", "keep")][-1]
    p = resumed.propose(context(cfg, {"train.py": best_text}, history, best, len(history)))
    finished = [t for t in resumed._study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert sorted(t.user_attrs["experiment"] for t in finished) == [r["id"] for r in history]
    assert sum(t.state.name == "FAIL" for t in finished) == sum(r["status"] == "crash" for r in history)
    assert resumed._dims == live._dims  # the same grown space, derived from the same ledger
    tried = {json.dumps({**r["proposal"].get("base", {}), **r["proposal"].get("params", {})}, sort_keys=True) for r in history}
    assert json.dumps(p.meta["params"], sort_keys=True) not in tried


def test_the_study_keeps_every_trial_across_keeps():
    cfg = config(seed=4)
    prop = TuneProposer(cfg, [])
    history, _ = run_synthetic(prop, cfg, TRAIN, 20, quadratic)
    assert sum(r["status"] == "keep" for r in history) >= 2
    told = {t.user_attrs.get("experiment") for t in prop._study.trials if t.state.name in ("COMPLETE", "FAIL")}
    assert told >= {r["id"] for r in history}


def test_a_default_range_grows_where_a_best_nears_its_edge_and_never_shrinks():
    knobs = find_knobs({"train.py": TRAIN})
    dims = build_space(knobs, {})
    lr, hidden = dims["LEARNING_RATE"], dims["HIDDEN"]
    assert grow(lr, 0.01) == lr  # in the middle (log scale): nothing to do
    wider = grow(lr, 0.09)
    assert wider.low == lr.low and wider.high > lr.high and wider.param(0.09) is not None
    assert grow(wider, 0.01) == wider  # a later best elsewhere never shrinks it
    assert (grow(hidden, 256).low, grow(hidden, 256).high) == (4, 9)  # one power of two further
    assert grow(hidden, 16).low == 3
    user = build_space(knobs, {"LEARNING_RATE": SpaceSpec(low=1e-3, high=0.1)})["LEARNING_RATE"]
    assert grow(user, 0.099) == user  # bounds the user set stay


def test_the_study_is_mirrored_to_an_optuna_journal(tmp_path):
    cfg = config(seed=0)
    state = tmp_path / ".autoresearch"
    (state / "runs" / "1").mkdir(parents=True)
    prop = TuneProposer(cfg, [])
    files = {"train.py": TRAIN}
    base = baseline_record(TRAIN, 3.0)
    ctx = Context(config=cfg, root=tmp_path, worktree=tmp_path, files=files, history=[base], best=base, noise=0.01,
                  run_dir=state / "runs" / "1", experiment_id=1)
    p = prop.propose(ctx)
    rec = {"kind": "experiment", "id": 1, "status": "discard", "metric": 3.5, "parent": base["commit"],
           "commit": sha(p.edits["train.py"]), "proposal": p.meta, "description": p.description}
    prop.observe(rec)
    study = load_journal(state / "optuna.journal")
    assert [(t.user_attrs["experiment"], t.value) for t in study.trials] == [(0, 3.0), (1, 3.5)]


def test_a_killed_holder_of_the_journal_lock_does_not_stall_the_next_start(tmp_path):
    # Optuna's own file locks outlive a SIGKILLed holder; the next harness then waited 30 s at every start.
    import subprocess
    import sys
    import threading

    from autoresearch.proposers.tune import _flock_journal_lock

    path = tmp_path / "optuna.journal.flock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from autoresearch.proposers.tune import _flock_journal_lock\n"
        f"_flock_journal_lock(Path({str(path)!r})).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    lock = _flock_journal_lock(path)
    taken = threading.Event()
    threading.Thread(target=lambda: lock.acquire() and taken.set(), daemon=True).start()
    assert taken.wait(10), "the lock of a killed holder still blocks"
    lock.release()


def load_journal(path: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def test_same_seed_same_proposals():
    def first_three(seed):
        cfg = config(seed=seed)
        history, _ = run_synthetic(TuneProposer(cfg, []), cfg, TRAIN, 3, quadratic)
        return [r["description"] for r in history[1:]]

    assert first_three(5) == first_three(5)
    assert first_three(5) != first_three(6)


def test_never_a_no_op_and_exhaustion_is_invalid():
    text = "A = 1\nB = 0.5\n"
    cfg = config(space={"A": SpaceSpec(choices=[1, 2]), "B": SpaceSpec(exclude=True)})
    prop = TuneProposer(cfg, [])
    base = baseline_record(text)
    p = prop.propose(context(cfg, {"train.py": text}, [base], base, 1))
    assert p.edits == {"train.py": "A = 2\nB = 0.5\n"} and p.description == "A 1 -> 2"
    rec = {"kind": "experiment", "id": 1, "status": "discard", "metric": 2.0, "parent": base["commit"],
           "commit": sha(p.edits["train.py"]), "proposal": p.meta}
    prop.observe(rec)
    with pytest.raises(ProposalInvalid, match="already tried"):
        prop.propose(context(cfg, {"train.py": text}, [base, rec], base, 2))


def test_no_knobs_is_a_clear_error():
    cfg = config()
    prop = TuneProposer(cfg, [])
    base = baseline_record("x = 1\n")
    with pytest.raises(ConfigError, match="no knobs"):
        prop.propose(context(cfg, {"train.py": "x = compute()\n"}, [base], base, 1))


@pytest.mark.parametrize("sampler", ["random", "cmaes"])
def test_other_samplers(sampler):
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    cfg = config(sampler=sampler, seed=2, goal="maximize")
    prop = TuneProposer(cfg, [])
    history, _ = run_synthetic(prop, cfg, TRAIN, 6, lambda v: -(quadratic(v) or 99))
    assert prop._study.direction.name == "MAXIMIZE"
    assert len({r["description"] for r in history[1:]}) == len(history) - 1


def test_optuna_is_silent(capfd):
    cfg = config(seed=0)
    prop = create(cfg, [])
    assert prop.name == "tune"
    run_synthetic(prop, cfg, TRAIN, 4, lambda v: None)  # every experiment crashes: told as failures
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_tune_runs_the_quickstart_through_the_loop(tmp_path):
    from autoresearch.ledger import Ledger
    from autoresearch.loop import run_loop
    from autoresearch.templates import init

    exp = tmp_path / "qs"
    init(exp, "quickstart")
    toml = exp / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("# seed = 0 ", "seed = 0   "))
    import subprocess

    subprocess.run(["git", "commit", "-qam", "seed"], cwd=exp, check=True)
    summary = run_loop(exp, max_experiments=3)
    assert summary.experiments == 3
    records = Ledger(exp / ".autoresearch").experiments()
    assert [r["status"] for r in records][0] == "baseline"
    tuned = records[1:]
    assert all(r["proposer"] == "tune" and r["proposal"]["params"] for r in tuned)
    assert all(r["status"] in ("keep", "discard", "crash") for r in tuned)
    # Resume: a new session continues with more proposals and never repeats code.
    run_loop(exp, max_experiments=1)
    records = Ledger(exp / ".autoresearch").experiments()
    assert len(records) == 5 and len({r["tree"] for r in records}) == 5
    # The journal optuna-dashboard opens agrees with the ledger, record for record.
    study = load_journal(exp / ".autoresearch" / "optuna.journal")
    assert [t.user_attrs["experiment"] for t in study.trials] == [r["id"] for r in records]
    assert [t.value for t in study.trials] == [r["metric"] if r["status"] in ("baseline", "keep", "discard") else None
                                               for r in records]


@pytest.mark.slow  # two real runs (20 s); test_learn_digest.py covers the warm start in the default suite
def test_learn_from_warm_starts_tune_and_never_records_the_other_run(tmp_path):
    from autoresearch.ledger import Ledger
    from autoresearch.loop import run_loop
    from autoresearch.templates import init

    import subprocess

    runs = {}
    for name in ("a", "b"):
        init(tmp_path / name, "quickstart")
        toml = tmp_path / name / "autoresearch.toml"
        toml.write_text(toml.read_text().replace("# seed = 0 ", "seed = 0   ").replace('[experiment]', '[experiment]\nsandbox = "none"'))
        subprocess.run(["git", "commit", "-qam", "seed"], cwd=tmp_path / name, check=True)
        runs[name] = tmp_path / name
    run_loop(runs["a"], max_experiments=4)
    a_ledger = (runs["a"] / ".autoresearch" / "ledger.jsonl").read_bytes()
    a_records = Ledger(runs["a"] / ".autoresearch").experiments()
    res = cli("run", runs["b"], "-n", "1", "-q", "--learn-from", runs["a"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (runs["a"] / ".autoresearch" / "ledger.jsonl").read_bytes() == a_ledger  # read, never written
    b_records = Ledger(runs["b"] / ".autoresearch").experiments()
    assert [r["status"] for r in b_records][0] == "baseline" and len(b_records) == 2
    first = b_records[1]
    assert first["proposal"]["learned_from"] == [str(runs["a"])]
    best_a = [r for r in a_records if r["status"] in ("baseline", "keep")][-1]
    if best_a["status"] == "keep":  # the other run's best is the first thing tried here
        assert first["proposal"]["params"] == best_a["proposal"]["params"]
        assert first["proposal"]["strategy"] == "learned"
    study = load_journal(runs["b"] / ".autoresearch" / "optuna.journal")
    assert [t.user_attrs["experiment"] for t in study.trials] == [0, 1]  # only this run's records


@pytest.mark.slow  # 6 s: two whole runs
def test_learn_from_a_run_of_another_metric_is_one_clear_error(tmp_path):
    from autoresearch.templates import init

    import subprocess

    other = make_experiment(tmp_path / "other")
    assert cli("run", other, "-n", "0", "-q").returncode == 0
    init(tmp_path / "qs", "quickstart")
    toml = tmp_path / "qs" / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('[experiment]', '[experiment]\nsandbox = "none"'))
    subprocess.run(["git", "commit", "-qam", "sandbox"], cwd=tmp_path / "qs", check=True)
    res = cli("run", tmp_path / "qs", "-n", "1", "-q", "--learn-from", other)
    assert_clean_exit(res, 2)
    assert "learn only from runs of the same metric" in res.stderr
    res = cli("run", tmp_path / "qs", "-n", "1", "-q", "--learn-from", tmp_path)
    assert_clean_exit(res, 2)
    assert "no run to learn from" in res.stderr
