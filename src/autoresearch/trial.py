"""One trial: one seeded execution of an experiment's commands, spec in, measured result out.

A trial makes its checkout exactly the candidate commit's files, runs `run` there under the
sandbox, then `evaluate` from a fresh read-only copy of the protected files, then the `guard`; it
checks that the checkout was not tampered with and returns what it measured. It holds no state of
the run: the loop (the coordinator) judges and records, and several trials may run at once, each in
its own checkout and scratch folder (a worker slot).
"""

from __future__ import annotations

import glob
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import judge as judging
from . import metrics as metric_io
from .config import Config
from .prune import Rule
from .runner import ProcessResult, experiment_env, run_process
from .sandbox import Limits, SandboxSpec
from .signing import key_dir
from .workspace import Workspace, git, sha256_file


@dataclass
class Measured:
    outcome: judging.RunOutcome
    info: dict[str, Any]  # what the record keeps of this repeat (one entry of record["runs"])
    result: ProcessResult
    metrics: dict[str, float]
    sandbox_warning: str | None = None
    protected_hashes: dict[str, str | None] = field(default_factory=dict)  # as the trial found them, before it ran


@dataclass
class Slot:
    """Where trials of one worker run: its checkout, its scratch folder (the evaluator's fresh copy,
    the guard's, the bytecode cache) and its share of the machine."""

    checkout: Path
    scratch: Path
    name: str = ""  # "" for the one-worker loop; "w0", "w1", ... with workers
    cpus: list[int] | None = None  # CPU affinity of every process of its trials
    env: dict[str, str] = field(default_factory=dict)  # CUDA_VISIBLE_DEVICES, thread counts
    cancel: threading.Event | None = None  # set by the coordinator at Ctrl-C: its processes are killed


@dataclass
class TrialSpec:
    exp_id: int
    k: int  # repeat index within its phase
    commit: str  # the code that runs
    expected_head: str  # what HEAD of the checkout must still be afterwards
    run_dir: Path  # .autoresearch/runs/<id>/
    seed: int | None = None
    repeats: int = 1
    budget: float | None = None  # a shorter budget than the experiment's (a screening run)
    label: str = ""  # names the files of a screening run
    prune: Rule | None = None
    eta_s: float | None = None
    # The baseline's code is the user's own: only its evaluation may write the evaluator's bytecode
    # cache. For every candidate the cache is read-only (an evaluator or guard that runs candidate
    # code, a service say, must not plant bytecode that later evaluations would run).
    trusted: bool = False
    on_start: Callable[[int], None] | None = None  # the process group, for the write-ahead intent


class Events:
    """What a trial reports while it runs (the live status line); quiet by default."""

    def begin(self, label: str, phase: str, *, budget_s: float | None = None, eta_s: float | None = None,
              slot: str = "") -> None: ...

    def output(self, line: str, slot: str = "") -> None: ...

    def end(self, slot: str = "") -> None: ...

    def measured(self, label: str, metric: str, value: float | None, run_s: float, evaluate_s: float | None,
                 slot: str = "") -> None:
        """One repeat finished with METRIC = VALUE (None: no number), so a long baseline's first number does
        not wait for its last repeat."""


class TrialRunner:
    """Runs trials of one experiment folder. Everything here is fixed for the run (configuration,
    file lists, the baseline's wall times once measured); `run` changes nothing shared."""

    def __init__(self, ws: Workspace, config: Config, *, editable: list[str], protected: list[str],
                 evaluator_files: list[str], secrets: list[str], limits: Limits, events: Events | None = None):
        self.ws, self.config = ws, config
        self.editable, self.protected, self.evaluator_files = editable, protected, evaluator_files
        self.secrets, self.limits = secrets, limits
        self.events = events or Events()
        self.baseline_walls: list[float] = []

    def run(self, spec: TrialSpec, slot: Slot) -> Measured:
        exp = self.config.experiment
        budget = exp.budget if spec.budget is None else spec.budget
        suffix = (f"-{spec.label}" if spec.label else "") + ("" if spec.k == 0 else f"-{spec.k + 1}")
        artifacts = spec.run_dir / f"artifacts{suffix}"
        if artifacts.exists():
            shutil.rmtree(artifacts)
        artifacts.mkdir(parents=True)
        seed = spec.k if spec.seed is None else spec.seed
        env = experiment_env(budget_s=int(budget) if budget == int(budget) else budget,
                             artifacts=artifacts, run_id=f"{spec.exp_id}{suffix}", seed=seed)
        env.update(slot.env)
        for name in self.secrets:  # the proposer's API key never reaches the experiment
            env.pop(name, None)
        checkout = slot.checkout
        if slot.name and not self._at(checkout, spec.expected_head):  # a worker's own detached checkout
            self.ws.scratch_checkout(checkout, spec.expected_head)
        cwd = self.ws.in_tree(checkout)
        self.ws.scrub(checkout, spec.commit, keep=exp.cache)  # nothing a previous experiment left behind
        editable_hashes = self.ws.hash_files(self.editable, checkout)
        protected_hashes = self.ws.hash_files(self.protected, checkout)
        cache_before = {rel: self.ws.hash_folder(checkout, rel) for rel in exp.cache}
        shown = f"[{spec.exp_id}] {spec.label + ' ' if spec.label else ''}repeat {spec.k + 1}/{spec.repeats}"
        watch = spec.prune.watch() if spec.prune is not None else None
        max_log = int(exp.max_log_mb * 1024 * 1024)
        output = (lambda line: self.events.output(line, slot.name))
        self.events.begin(shown, "run", budget_s=budget, eta_s=spec.eta_s, slot=slot.name)
        try:
            res = run_process(exp.run, cwd=cwd, env=env, timeout=exp.timeout * budget / exp.budget,
                              log_path=spec.run_dir / f"run{suffix}.log", max_log_bytes=max_log, on_start=spec.on_start,
                              on_line=output, sandbox=self.sandbox_spec(cwd, artifacts, slot, evaluate=False),
                              watch=watch.feed if watch is not None else None, cpus=slot.cpus, cancel=slot.cancel)
            run_metrics = metric_io.collect(res.output, artifacts)
            step, final, eval_metrics, eval_start_s = "run", res, None, None
            if exp.evaluate.strip() and res.ok:
                self.events.begin(shown, "evaluate", eta_s=None if spec.eta_s is None else spec.eta_s - res.wall_s, slot=slot.name)
                t0 = time.monotonic()
                fresh = self.ws.export_files(spec.commit, self.evaluator_files, slot.scratch / "checkout")
                eval_start_s = time.monotonic() - t0
                eres = run_process(exp.evaluate, cwd=fresh, env=self.evaluate_env(env, slot), timeout=exp.timeout,
                                   log_path=spec.run_dir / f"evaluate{suffix}.log", max_log_bytes=max_log,
                                   on_start=spec.on_start, on_line=output,
                                   sandbox=self.sandbox_spec(fresh, artifacts, slot, evaluate=True, cache_writable=spec.trusted),
                                   cpus=slot.cpus, cancel=slot.cancel)
                eval_metrics = metric_io.parse_text(eres.output)
                step, final = "evaluate", eres
            guard = None
            if exp.guard.strip() and final.ok:
                self.events.begin(shown, "guard", slot=slot.name)
                guard = self.run_guard(spec, suffix, artifacts, env, slot)
        finally:
            self.events.end(slot.name)
        metrics = eval_metrics if eval_metrics is not None else run_metrics
        primary = None if (exp.evaluate.strip() and eval_metrics is None) else metrics.get(self.config.metric.name)
        if guard is not None:  # the guard is protected too: its numbers (say, tests run) may bear constraints
            metrics = {**{k: v for k, v in guard["metrics"].items() if k != self.config.metric.name}, **metrics}
        problem = self.tampering(checkout, spec.expected_head, editable_hashes, protected_hashes)
        allowance, allowance_rule = judging.wall_allowance(budget, self.baseline_walls if budget == exp.budget else [],
                                                           tolerance=exp.wall_tolerance, grace=exp.budget_grace)
        outcome = judging.RunOutcome(
            metric=primary,
            exit_code=final.exit_code,
            timed_out=final.timed_out,
            failed_step=step if final is not res or not res.ok else "run",
            last_line=(final.tail(1) if not final.ok else ""),
            over_budget=res.ok and res.wall_s > allowance,
            wall_s=res.wall_s,
            allowance_s=allowance,
            problem=problem,
            seed=seed,
            pruned=res.stopped,
            guard_failed=(guard or {}).get("failed", ""),
        )
        if not res.ok:
            outcome.failed_step, outcome.exit_code, outcome.timed_out = "run", res.exit_code, res.timed_out
            outcome.last_line = res.tail(1)
        counted = judging.failure(outcome, self.config.metric.name) is None  # a failed repeat shows no number
        self.events.measured(shown, self.config.metric.name, outcome.metric if counted else None, res.wall_s,
                             final.wall_s if final is not res else None, slot=slot.name)
        info = {
            "seed": seed,
            "exit_code": res.exit_code,
            "evaluate_exit_code": final.exit_code if final is not res else None,
            "wall_s": round(res.wall_s, 3),
            "wall_allowance_s": round(allowance, 3),
            "wall_allowance_rule": allowance_rule,
            "evaluate_wall_s": round(final.wall_s, 3) if final is not res else None,
            "evaluator_checkout_s": round(eval_start_s, 4) if eval_start_s is not None else None,
            "peak_rss_mb": round(max(res.peak_rss_mb, final.peak_rss_mb), 1),
            "peak_vram_mb": metrics.get("peak_vram_mb", run_metrics.get("peak_vram_mb")),
            "timed_out": res.timed_out or final.timed_out,
            "metrics": metric_io.jsonable(metrics),
            "sandbox": res.sandbox,
            "enforced": res.extra.get("enforced", {}),
            "log_sha256": sha256_file(res.log_path),
            "output_bytes": res.output_bytes,
        }
        if slot.name:
            info["worker"] = slot.name
            if slot.cpus is not None:
                info["cpus"] = list(slot.cpus)
            if "CUDA_VISIBLE_DEVICES" in slot.env:
                info["gpus"] = slot.env["CUDA_VISIBLE_DEVICES"]
        if guard is not None:
            info["guard"] = {k: (metric_io.jsonable(v) if k == "metrics" else v) for k, v in guard.items()
                             if k not in ("failed", "interrupted")}
        if spec.label:
            info["budget_s"] = budget
        if watch is not None:
            info["curve"] = watch.curve  # the intermediate values as printed: they only ever stop a run
            if watch.fired is not None and res.stopped:
                info["pruned"] = watch.fired
        if exp.cache:
            info["cache_sha256"] = {"before": cache_before,
                                    "after": {rel: self.ws.hash_folder(checkout, rel) for rel in exp.cache}}
        if eval_metrics is not None:
            info["run_metrics"] = metric_io.jsonable(run_metrics)  # recorded, never counted
        if res.interrupted or final.interrupted or (guard or {}).get("interrupted"):
            info["interrupted"] = True
        return Measured(outcome, info, final if not res.ok or final is not res else res, metrics, res.sandbox_warning,
                        protected_hashes)

    def run_guard(self, spec: TrialSpec, suffix: str, artifacts: Path, env: dict[str, str], slot: Slot) -> dict[str, Any]:
        """`[experiment] guard`: the protected check that must pass (the service's own tests, say),
        run like `evaluate` but on the whole committed experiment folder, exported fresh from git:
        the candidate's code as committed, nothing `run` left behind. Non-zero exit -> rejected."""
        exp = self.config.experiment
        fresh = self.ws.export_files(spec.commit, ["."], slot.scratch / "guard")
        res = run_process(exp.guard, cwd=fresh, env=self.evaluate_env(env, slot), timeout=exp.timeout,
                          log_path=spec.run_dir / f"guard{suffix}.log", max_log_bytes=int(exp.max_log_mb * 1024 * 1024),
                          on_start=spec.on_start, on_line=lambda line: self.events.output(line, slot.name),
                          sandbox=self.sandbox_spec(fresh, artifacts, slot, evaluate=True, cache_writable=spec.trusted),
                          cpus=slot.cpus, cancel=slot.cancel)
        out: dict[str, Any] = {"command": exp.guard, "exit_code": res.exit_code, "wall_s": round(res.wall_s, 3),
                               "timed_out": res.timed_out, "log_sha256": sha256_file(res.log_path),
                               "metrics": metric_io.parse_text(res.output)}
        if res.interrupted:
            out["interrupted"] = True
        if not res.ok and not res.interrupted:
            how = "hit the timeout" if res.timed_out else f"exited with status {res.exit_code}"
            tail = res.tail(1).strip()[:200]
            out["failed"] = f"guard {exp.guard!r} {how}{': ' + tail if tail else ''} (see {res.log_path.name})"
        return out

    @property
    def pycache(self) -> Path:
        """The evaluator's bytecode cache: one for the run, out of `run`'s sight, written only while
        the baseline is measured and read-only afterwards (see TrialSpec.trusted)."""
        return self.ws.state / "evaluator" / "pycache"

    def evaluate_env(self, env: dict[str, str], slot: Slot) -> dict[str, str]:
        """`evaluate` runs Python with a bytecode cache of its own, out of `run`'s sight: a `.pyc`
        that `run` planted is never read (and the fresh checkout has no `__pycache__` at all)."""
        pycache = self.pycache
        pycache.mkdir(parents=True, exist_ok=True)
        out = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE",
                                                         "PYTHONDONTWRITEBYTECODE")}
        # Written by the baseline's evaluation, so later ones find their imports compiled (torch: ~5 s of CPU).
        out["PYTHONPYCACHEPREFIX"] = str(pycache)
        out["PYTHONNOUSERSITE"] = "1"
        return out

    def sandbox_spec(self, workdir: Path, artifacts: Path, slot: Slot, *, evaluate: bool,
                     cache_writable: bool = False) -> SandboxSpec:
        """What `run` (or `evaluate`) may see and touch. The whole state folder (ledger, other
        checkouts, other experiments' outputs), the signing key and, for `run`, the `hidden` paths
        and the home folder are out of sight; protected files are read-only. `evaluate` works in a
        fresh read-only copy of the protected files and reads the artifacts as data."""
        exp = self.config.experiment
        hidden: list[Path] = [self.ws.state, key_dir()]
        readonly: list[Path] = []
        writable: list[Path] = []
        visible: list[Path] = []
        if evaluate:
            readonly += [workdir, artifacts]
            (writable if cache_writable else readonly).append(self.pycache)
        else:
            readonly += [workdir / rel for rel in self.protected]
            writable.append(artifacts)
            for entry in exp.hidden:
                if entry.startswith(("/", "~", "$")):  # data outside the folder, e.g. a cached validation split
                    hidden += glob_paths(entry)
                else:
                    hidden += [workdir / rel for rel in self.ws.expand([entry], self.ws.repo, key="hidden")]
                    hidden += [self.ws.root / rel for rel in self.ws.expand([entry], self.ws.repo, key="hidden")]
                    hidden.append(self.ws.git_dir())  # a tracked hidden file could be read from git's objects
            for entry in exp.visible:
                visible += glob_paths(entry)
        return SandboxSpec(
            mode=exp.sandbox,
            workdir=workdir,
            writable=writable,
            readonly=readonly,
            hidden=[p for p in hidden if p.exists()],
            secrets=list(exp.secrets),
            limits=self.limits,
            hide_home=not evaluate,
            visible=visible,
        )

    def tampering(self, checkout: Path, expected_head: str, editable_hashes: dict, protected_hashes: dict) -> str:
        """What the experiment may not do to its checkout: change protected files, change the code
        that was committed, move HEAD, or break the repository."""
        now_protected = self.ws.hash_files(list(protected_hashes), checkout)
        changed = [p for p, h in protected_hashes.items() if now_protected.get(p) != h]
        if changed:
            return f"protected file {', '.join(changed)} was changed during the experiment"
        now_editable = self.ws.hash_files(list(editable_hashes), checkout)
        changed = [p for p, h in editable_hashes.items() if now_editable.get(p) != h]
        if changed:
            return f"{', '.join(changed)} changed while the experiment ran; the code that ran is not the commit"
        if not self._at(checkout, expected_head):
            return "the experiment moved HEAD or damaged the repository of its checkout"
        return ""

    @staticmethod
    def _at(checkout: Path, commit: str) -> bool:
        return (checkout / ".git").exists() and git("rev-parse", "HEAD", cwd=checkout, check=False).strip() == commit


def glob_paths(entry: str) -> list[Path]:
    """A config path (`~`, `$VAR`, globs) as the paths it names now; an unset variable names none."""
    expanded = os.path.expandvars(os.path.expanduser(entry))
    if "$" in expanded:
        return []
    return [Path(p) for p in glob.glob(expanded)]
