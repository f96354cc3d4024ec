"""Many experiments at once: worker slots on this machine, and the coordinator that drives them.

The coordinator (the harness's main thread) is the only one that proposes, judges, records and
moves the branch. Each worker slot has its own checkout under `.autoresearch/workers/<name>/`, its
own scratch folder for the evaluator, its own cores (affinity, and the thread-count variables set
to match) and its own GPUs (`CUDA_VISIBLE_DEVICES`). A slot runs one experiment at a time, trial by
trial, on a thread of a pool (the trials are processes: the threads only wait).

Keep semantics: a candidate is built on the best at the time it is proposed. If it wins but the
best moved while it ran, its change is replayed onto the new best (a three-way merge) and run again
there before it can be kept; a change that no longer applies is recorded `conflict`. Each record
names the best it was measured against (`measured_against`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import judge as judging
from .config import ResourcesConfig
from .errors import ProposalInvalid, UserError
from .experiment import Experiment
from .trial import Measured, Slot

MAX_REPLAYS = 3  # a winner replayed onto a moving best this often, at most
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "AUTORESEARCH_CPUS")


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else what `nvidia-smi -L` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def plan_slots(resources: ResourcesConfig, state_dir: Any, *, cores: list[int] | None = None,
               gpus: list[str] | None = None) -> list[Slot]:
    """One slot per worker, each with its share of the cores and GPUs. Two workers never share a
    core or a GPU unless asked (`gpus_per_worker = 0`, or more cores per worker than there are)."""
    n = resources.workers
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    per = resources.cpus_per_worker or max(1, len(cores) // n)
    if per * n > len(cores) and resources.cpus_per_worker is None:
        per = 1  # more workers than cores: one each, shared round-robin
    gpus = visible_gpus() if gpus is None else gpus
    g = resources.gpus_per_worker
    if g is None:
        if gpus and len(gpus) < n:
            raise UserError(f"{n} workers but {len(gpus)} GPU(s): use at most {len(gpus)} workers, or set "
                            "gpus_per_worker = 0 in [resources] (or --gpus-per-worker 0) to let them share")
        g = len(gpus) // n if gpus else 0
    elif g * n > len(gpus) and g > 0:
        raise UserError(f"{n} workers x {g} GPU(s) each needs {g * n} GPUs, but {len(gpus)} are visible; "
                        "use fewer workers or fewer GPUs per worker")
    slots = []
    cancel = threading.Event()
    for k in range(n):
        mine = [cores[(k * per + i) % len(cores)] for i in range(per)] if cores else None
        env = {var: str(per) for var in THREAD_VARS}
        if g > 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[k * g:(k + 1) * g])
        name = f"w{k}"
        base = state_dir / "workers" / name
        slots.append(Slot(checkout=base / "checkout", scratch=base / "evaluator", name=name, cpus=mine, env=env,
                          cancel=cancel))
    return slots


def ray_slots(resources: ResourcesConfig, state_dir: Any) -> tuple[list[Slot], int, int]:
    """Slots for the Ray backend, and the cores and GPUs each task asks Ray for: Ray decides the
    node, and there sets CUDA_VISIBLE_DEVICES itself; the thread-count variables follow the cores."""
    per = resources.cpus_per_worker or 1
    gpus = resources.gpus_per_worker or 0
    slots = [Slot(checkout=state_dir / "workers" / f"w{k}" / "checkout", scratch=state_dir / "workers" / f"w{k}" / "evaluator",
                  name=f"w{k}", env={var: str(per) for var in THREAD_VARS}) for k in range(resources.workers)]
    return slots, per, gpus


class LocalBackend:
    """Trials on threads of this process (each trial is processes; the threads only wait)."""

    name = "local"

    def __init__(self, n: int):
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="autoresearch-worker")

    def submit(self, session: Any, runner: Any, spec: Any, slot: Slot) -> Future:
        return self.pool.submit(session.run_trial, runner, spec, slot)

    def cancel(self, future: Future) -> None:
        """The slot's cancel event kills the trial's processes (set by the coordinator)."""

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class RayBackend:
    """Trials as Ray tasks, each asking for its worker's cores and GPUs (`num_cpus`, `num_gpus`); Ray
    places them on the cluster's nodes and sets CUDA_VISIBLE_DEVICES. The experiment folder must be
    on a filesystem every node sees at the same path (docs/cluster.md). A task whose node dies is
    retried once on another node; a result is recorded once however often it arrives."""

    name = "ray"

    def __init__(self, resources: ResourcesConfig, cpus: int, gpus: int):
        try:
            import ray
        except ImportError:
            raise UserError('backend "ray" needs Ray: pip install -e ".[ray]"') from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=resources.address or None, log_to_driver=False, include_dashboard=False,
                     configure_logging=False)
        self.remote = ray.remote(_trial_on_node).options(num_cpus=cpus, num_gpus=gpus, max_retries=1)
        self.refs: dict[Future, Any] = {}

    def submit(self, session: Any, runner: Any, spec: Any, slot: Slot) -> Future:
        spec = replace(spec, on_start=None)  # a process group on another node means nothing here
        ref = self.remote.remote(_RunnerSpec.of(runner), spec, slot)
        fut = ref.future()
        self.refs[fut] = ref
        return fut

    def cancel(self, future: Future) -> None:
        ref = self.refs.get(future)
        if ref is not None:
            self.ray.cancel(ref, force=True)  # kills the task's worker, and with it the trial's processes

    def close(self) -> None:
        self.refs.clear()


@dataclass
class _RunnerSpec:
    """What a node needs to rebuild the trial runner: plain values, no open files or threads."""

    root: str
    config: dict[str, Any]
    editable: list[str]
    protected: list[str]
    evaluator_files: list[str]
    secrets: list[str]
    limits: Any
    baseline_walls: list[float]

    @classmethod
    def of(cls, runner: Any) -> "_RunnerSpec":
        return cls(str(runner.ws.root), runner.config.model_dump(mode="json"), runner.editable, runner.protected,
                   runner.evaluator_files, runner.secrets, runner.limits, runner.baseline_walls)


def _trial_on_node(rs: _RunnerSpec, spec: Any, slot: Slot) -> Measured:
    """A Ray task: one trial, on whichever node Ray chose."""
    from pathlib import Path

    from .config import Config
    from .trial import TrialRunner
    from .workspace import Workspace

    ws = Workspace(Path(rs.root))
    runner = TrialRunner(ws, Config.model_validate(rs.config), editable=rs.editable, protected=rs.protected,
                         evaluator_files=rs.evaluator_files, secrets=rs.secrets, limits=rs.limits)
    runner.baseline_walls = rs.baseline_walls
    measured = runner.run(spec, slot)
    try:
        import ray

        measured.info["node"] = ray.get_runtime_context().get_node_id()[:16]  # where Ray ran it
    except Exception:  # outside a Ray task (tests call this directly): no node to name
        pass
    return measured


@dataclass
class Running:
    exp: Experiment
    slot: Slot
    future: Future
    replays: int = 0
    proposer: Any = None  # who proposed it (with per-worker agents, the slot's own)


@dataclass
class Proposing:
    """A slot whose own agent is writing a change (minutes), in the slot's agent checkout."""

    slot: Slot
    proposer: Any
    exp_id: int
    checkout: Any
    attempt: int = 0


@dataclass
class Coordinator:
    """Drives experiments on worker slots until `should_start()` says no more and all have landed."""

    session: Any  # loop.Session
    proposer: Any
    slots: list[Slot]
    should_start: Callable[[int], bool]  # (experiments landed so far) -> may another start?
    propose: Callable[[Any, Any], Any]  # loop.propose: (session, proposer) -> (candidate, proposal) or a record
    on_record: Callable[[dict[str, Any]], None] = lambda rec: None
    backend: Any = None  # LocalBackend (default) or RayBackend
    # A proposer that works in a checkout for minutes (`agent`) runs one instance per worker, each
    # in the worker's own agent checkout, while the other workers run trials: this makes them.
    make_proposer: Callable[[], Any] | None = None
    landed: int = 0
    _running: dict[Future, Running] = field(default_factory=dict)
    _proposing: dict[Future, Proposing] = field(default_factory=dict)

    def run(self) -> None:
        s, propose = self.session, self.propose
        free = list(self.slots)
        runner = s.trials
        pool = self.backend = self.backend or LocalBackend(len(self.slots))
        per_worker = self.make_proposer is not None and getattr(self.proposer, "per_worker", False)
        agents = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="autoresearch-agent") if per_worker else None
        slot_proposers: dict[str, Any] = {}
        try:
            while True:
                while free and self.should_start(self.landed + len(self._running) + len(self._proposing)):
                    if per_worker:
                        slot = free.pop(0)
                        if slot.name not in slot_proposers:
                            slot_proposers[slot.name] = self.make_proposer()
                            slot_proposers[slot.name].cancel = slot.cancel  # Ctrl-C stops its agent too
                        self._ask(agents, Proposing(slot, slot_proposers[slot.name], s.next_id(), slot.checkout.parent / "agent"))
                        continue
                    got = propose(s, self.proposer)
                    if isinstance(got, dict):  # could not run; already recorded and observed
                        self.landed += 1
                        self.on_record(got)
                        continue
                    candidate, proposal = got
                    slot = free.pop(0)
                    exp = s.begin(candidate, description=proposal.description, proposer=self.proposer.name,
                                  proposal=proposal.meta)
                    self._submit(pool, runner, Running(exp, slot, None))  # type: ignore[arg-type]
                if not self._running and not self._proposing:
                    break
                done, _ = wait([*self._running, *self._proposing], return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut in self._proposing:
                        asked = self._proposing.pop(fut)
                        if not self._proposed(asked, fut, agents, pool, runner):
                            free.append(asked.slot)
                        continue
                    job = self._running.pop(fut)
                    try:
                        measured = fut.result()
                    except Exception as err:  # the worker or its node was lost (after Ray's one retry)
                        measured = None
                        job.exp.verdict = judging.Verdict("interrupted", f"the worker running it was lost: {err}"[:300])
                    if measured is not None:
                        job.exp.absorb(measured)
                    if not job.exp.done:
                        self._submit(pool, runner, job)
                        continue
                    if self._replayed(job, pool, runner):
                        continue
                    record = s.conclude(job.exp, keep_checkout=s.ws.worktree)
                    (job.proposer or self.proposer).observe(record)
                    self.landed += 1
                    self.on_record(record)
                    free.append(job.slot)
        except KeyboardInterrupt:
            self._cancel_all()
            raise
        finally:
            pool.close()
            if agents is not None:  # at Ctrl-C the slots' cancel event has killed the agents' processes
                agents.shutdown(wait=True, cancel_futures=True)
            for prop in slot_proposers.values():
                prop.close()

    def _ask(self, agents: ThreadPoolExecutor, job: Proposing, feedback: str = "") -> None:
        """Start the slot's agent on a change to the current best, in the slot's agent checkout."""
        from .loop import _context

        s = self.session
        s.reserved.add(job.exp_id)
        s.ws.scratch_checkout(job.checkout, s.ws.branch_head(s.tag))
        ctx = _context(s, feedback, checkout=job.checkout, exp_id=job.exp_id)
        self._proposing[agents.submit(job.proposer.propose, ctx)] = job

    def _proposed(self, job: Proposing, fut: Future, agents: ThreadPoolExecutor, pool: Any, runner: Any) -> bool:
        """An agent finished: commit its change on the best it started from and run it (True), ask
        again for a duplicate, or record why it cannot run (False: the slot is free)."""
        from .loop import MAX_DUPLICATE_RETRIES, commit_proposal, duplicate_feedback, record_duplicate, record_no_proposal

        s = self.session
        s.reserved.discard(job.exp_id)
        try:
            proposal = fut.result()
        except ProposalInvalid as err:
            self._landed(record_no_proposal(s, job.proposer, err))
            return False
        candidate = commit_proposal(s, job.proposer, proposal, job.checkout)
        if isinstance(candidate, dict):
            self._landed(candidate)
            return False
        seen = s.tried_trees().get(candidate.tree)
        if seen is not None and job.attempt < MAX_DUPLICATE_RETRIES:
            job.attempt += 1
            self._ask(agents, job, duplicate_feedback(s, proposal, seen))
            return True
        if seen is not None:
            self._landed(record_duplicate(s, job.proposer, proposal, seen))
            return False
        exp = s.begin(candidate, description=proposal.description, proposer=job.proposer.name, proposal=proposal.meta,
                      exp_id=job.exp_id)
        self._submit(pool, runner, Running(exp, job.slot, None, proposer=job.proposer))  # type: ignore[arg-type]
        return True

    def _landed(self, record: dict[str, Any]) -> None:
        self.landed += 1
        self.on_record(record)

    def _submit(self, pool: Any, runner: Any, job: Running) -> None:
        """The experiment's next trial, on its slot (which also readies the slot's checkout)."""
        spec = job.exp.next_trial()
        assert spec is not None
        job.future = pool.submit(self.session, runner, spec, job.slot)
        self._running[job.future] = job

    def _replayed(self, job: Running, pool: Any, runner: Any) -> bool:
        """A winner measured against a best that has moved since: replay its change onto the new best
        and run it again there (True), or mark it a conflict when it no longer applies (False)."""
        s, exp = self.session, job.exp
        head = s.ws.branch_head(s.tag)
        if exp.verdict is None or exp.verdict.status != "keep" or exp.candidate.parent == head:
            return False
        replayed = s.ws.replay(exp.candidate, head) if job.replays < MAX_REPLAYS else None
        moved = (exp.basis.best_rec or {}).get("id")
        now_best = s.history.best
        if replayed is None and job.replays >= MAX_REPLAYS:
            exp.verdict = judging.Verdict("conflict", f"a winner, but the best moved {MAX_REPLAYS + 1} times while it ran "
                                                      "and was replayed; not kept")
            return False
        if replayed is None:
            exp.verdict = judging.Verdict(
                "conflict", f"a winner against experiment {moved}, but the best moved to experiment "
                            f"{(now_best or {}).get('id')} while it ran and its change no longer applies there")
            return False
        s.progress.info(f"experiment {exp.id}: a winner, but the best moved to experiment {(now_best or {}).get('id')} "
                        "while it ran; replaying its change there and running it again")
        before = {"commit": exp.candidate.commit, "parent": exp.candidate.parent, "measured_against": moved,
                  "verdict": exp.verdict.reason, "runs": [m.info for m in exp.runs]}
        s.in_flight.pop(exp.id, None)
        kept_aside = exp.run_dir / f"replay-{job.replays + 1}"  # its logs and artifacts stay, beside the record
        kept_aside.mkdir(parents=True, exist_ok=True)
        for old in list(exp.run_dir.iterdir()):
            if old.name.startswith(("run", "evaluate", "artifacts", "guard")):
                shutil.move(str(old), str(kept_aside / old.name))
        before["files"] = kept_aside.name
        again = s.begin(replayed, description=exp.description, proposer=exp.proposer,
                        proposal={**exp.proposal, "replayed_from": exp.candidate.commit}, exp_id=exp.id)
        again.replayed = [*exp.replayed, before]
        self._submit(pool, runner, Running(again, job.slot, None, job.replays + 1))  # type: ignore[arg-type]
        return True

    def _cancel_all(self) -> None:
        """Ctrl-C: every worker's processes are killed; each experiment is recorded `interrupted`."""
        for slot in self.slots:
            if slot.cancel is not None:
                slot.cancel.set()
        for fut in list(self._running):
            self.backend.cancel(fut)
        deadline = time.monotonic() + 30
        for fut, job in list(self._running.items()):
            try:
                m: Measured = fut.result(timeout=max(deadline - time.monotonic(), 0.1))
                job.exp.absorb(m)
            except Exception:  # a trial that could not even report: the intent records it at resume
                continue
            if not job.exp.done:
                job.exp.verdict = judging.Verdict("interrupted", "stopped by Ctrl-C; the experiment's processes were killed")
                job.exp.interrupted = True
            record = self.session.conclude(job.exp, keep_checkout=self.session.ws.worktree)
            self.landed += 1
            self.on_record(record)
        self._running.clear()
