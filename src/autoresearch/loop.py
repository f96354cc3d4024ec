"""The loop: propose -> apply -> run -> evaluate -> measure -> judge -> record -> keep or discard.

`Session` owns one experiment folder's run: it opens or resumes it, recovers from a harness that
was killed, measures the baseline, and turns candidates into records (`experiment.Experiment`
decides what to run and the verdict, `trial.TrialRunner` runs). `run_loop` drives a proposer
through it, one experiment at a time or many at once on worker slots (`workers.py`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import statistics
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from . import holdout
from . import judge as judging
from .config import Config, load_config
from .errors import ProposalInvalid, UserError
from .experiment import Basis, Experiment, interrupted_record, invalid_record
from .hostinfo import host_info
from .ledger import Intents, Ledger
from .progress import LoopSummary, Progress
from .proposers import Context, Proposal, Proposer, create
from .record import History
from .runner import experiment_env, group_alive, kill_group, run_process
from .sandbox import Limits
from .signing import Signer, fingerprint, key_dir
from .trial import Measured, Slot, TrialRunner, TrialSpec
from .workspace import BRANCH_PREFIX, Candidate, Workspace

EMPTY_DIFF_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b"": the baseline's diff
MAX_DUPLICATE_RETRIES = 3


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Stop(Exception):
    """Ctrl-C reached the harness while an experiment ran; it has been recorded."""


class Session:
    """One experiment folder and its run (branch, worktree, ledger)."""

    def __init__(self, root: Path, *, config: Config | None = None, progress: Progress | None = None):
        self.ws = Workspace(root)
        self.root = self.ws.root
        self.config = config or load_config(self.root)
        self.ledger = Ledger(self.ws.state)
        self.progress = progress or Progress(quiet=True)
        self.tag: str | None = None
        self.limits = Limits.default()  # what stops a fork bomb or a runaway file
        self.intents = Intents(self.ws.state)  # write-ahead intents of the experiments in flight
        self.in_flight: dict[int, Experiment] = {}
        self.reserved: set[int] = set()  # ids promised to a worker's agent that is still writing its change
        self._lock_fh = None
        self._sandbox_warned = False

    # ---- locking ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """One harness per experiment folder at a time."""
        self.ws.state.mkdir(parents=True, exist_ok=True)
        fh = open(self.ws.state / "lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(f"{self.ws.state}: a harness is already running here ({holder}); wait for it or stop it first") from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            self._lock_fh = None

    # ---- opening ---------------------------------------------------------------------------------
    @property
    def editable(self) -> list[str]:
        return self.ws.expand(self.config.experiment.editable, self.ws.worktree if self.tag else None)

    @property
    def protected(self) -> list[str]:
        if not self.config.experiment.protected:
            return []
        return self.ws.expand(self.config.experiment.protected, self.ws.worktree if self.tag else None, key="protected")

    def open(self, tag: str | None = None, new: bool = False) -> str:
        """Resume the run in this folder, or start one. Returns the tag."""
        note = self.ledger.repair_torn_tail()
        if note:
            self.progress.warn(note)
        runs = self.ws.state / "runs"
        leftovers = self.ledger.path.exists() or (runs.is_dir() and any(runs.iterdir()))
        if new and leftovers:
            self._archive()
        elif not self.ledger.exists() and leftovers:
            raise UserError(
                f"{self.ledger.path} is empty or missing but {runs} holds experiments: the ledger was truncated or "
                f"deleted; check it with `autoresearch verify {self.root}`, or start over with `autoresearch run {self.root} --new`"
            )
        if self.ledger.exists():
            header = self.ledger.header()
            if header is None:
                raise UserError(f"{self.ledger.path}: no start record; the ledger is damaged (check it with `autoresearch verify {self.root}`)")
            if tag and tag != header["tag"]:
                raise UserError(f"{self.root} has a run with tag {header['tag']!r}; resume it without --tag, or start another with --new --tag {tag}")
            self.tag = header["tag"]
            self.ledger.signer = self._load_signer(header)
            self.check_config_pinned(header)
            self.ws.open_run(self.tag)
            self.recover()
            return self.tag
        self.ws.check_clean(self.ws.expand(self.config.experiment.editable) + (
            self.ws.expand(self.config.experiment.protected, key="protected") if self.config.experiment.protected else []))
        self.tag, base = self.ws.create_run(tag)
        key_id = f"{self.tag}-{uuid.uuid4().hex[:12]}"
        self.ledger.signer = Signer.load_or_create(key_id)
        self._append({
            "kind": "start",
            "version": 1,
            "tag": self.tag,
            "branch": BRANCH_PREFIX + self.tag,
            "base_commit": base,
            "experiment_dir": self.ws.rel,
            "metric": self.config.metric.name,
            "goal": self.config.metric.goal,
            "config": self.config.model_dump(mode="json"),
            "config_sha256": config_digest(self.config.model_dump(mode="json")),
            "created": _now(),
            "key_id": key_id,
            "public_key": self.ledger.signer.public_key,
            "host": host_info(),
        })
        return self.tag

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Record, then (when configured) have a time-stamp authority witness the new chain head."""
        from .timestamp import maybe_stamp

        record = self.ledger.append(record)
        maybe_stamp(self.ws.state, self.config.evidence, *self.ledger.chain_head(), warn=self.progress.warn)
        return record

    def witness_and_head(self) -> list[str]:
        """At a stop: a time-stamp of the final head (when configured), and the line to note."""
        from .ledger import chain_head_line
        from .timestamp import maybe_stamp

        if not self.ledger.exists():
            return []
        maybe_stamp(self.ws.state, self.config.evidence, *self.ledger.chain_head(), force=True, warn=self.progress.warn)
        return [f"{chain_head_line(self.ws.state)} (note it: a later rewrite or truncation of the record changes it)"]

    def check_config_pinned(self, header: dict[str, Any]) -> None:
        """The configuration is fixed when the run starts: a resumed run or a `try` that finds
        autoresearch.toml changed (say `evaluate = ""`, a longer budget) refuses to go on. Only
        the proposer may change between sessions; each record names the proposer it came from."""
        pinned = [r for r in self.ledger.records() if r.get("kind") in ("start", "config")][-1]
        started = {k: v for k, v in (pinned.get("config") or {}).items() if k not in UNPINNED}
        now = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in UNPINNED}
        differ = _differing_keys(started, now)
        if differ and not self.has_baseline() and self.ledger.signer is not None:
            # Nothing has been measured yet (a baseline that crashed): the fix is recorded and the run goes on.
            self._append({"kind": "config", "config": self.config.model_dump(mode="json"),
                                "config_sha256": config_digest(self.config.model_dump(mode="json")),
                                "changed": differ, "created": _now()})
            self.progress.info(f"autoresearch.toml changed before the baseline ({', '.join(differ[:8])}); recorded")
            return
        if differ:
            raise UserError(
                f"{self.root / 'autoresearch.toml'} changed since the run started ({', '.join(differ[:8])}"
                f"{', ...' if len(differ) > 8 else ''}); put it back, or start a new run with the new configuration "
                f"with `autoresearch run {self.root} --new`"
            )

    def _load_signer(self, header: dict[str, Any]) -> Signer:
        key_id = header.get("key_id", "")
        if not (key_dir() / f"{key_id}.key").exists():
            raise UserError(
                f"the run's private key {key_dir() / f'{key_id}.key'} is missing, so new records could not be signed; "
                f"start a new run with `autoresearch run {self.root} --new` (the old one is archived)"
            )
        return Signer.load_or_create(key_id)

    def _archive(self) -> None:
        try:
            old = self.ledger.header() or {}
        except Exception:  # an unreadable ledger is archived as it is
            old = {}
        dest = self.ws.state / "archive" / str(old.get("tag", "old"))
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("ledger.jsonl", "results.tsv", "runs", "pending", "progress.png", "report.html", "timestamps"):
            if (self.ws.state / name).exists():
                shutil.move(str(self.ws.state / name), str(dest / name))
        self.ws.remove_worktree()
        self.ws.drop_checkout(self.ws.state / "try-checkout")
        for slot in sorted((self.ws.state / "workers").glob("*/checkout")):
            self.ws.drop_checkout(slot)
        self.ledger = Ledger(self.ws.state, signer=self.ledger.signer)
        self.progress.info(f"archived the previous run to {dest}")

    def recover(self, reset_checkout: Path | None = None) -> None:
        """Bring disk, git and ledger back into agreement after a harness that died mid-experiment:
        every experiment whose write-ahead intent is on disk but whose record is not is recorded
        `interrupted` (with several workers, several may be)."""
        assert self.tag
        if not self.ledger.results_agree():
            self.ledger.rewrite_results()
        pending = self.intents.all()
        recorded = self.history.ids()
        for intent in pending:
            if intent.get("pgid") and group_alive(intent["pgid"]):
                kill_group(intent["pgid"], grace=1.0)
        for intent in pending:
            if not isinstance(intent.get("id"), int) or intent["id"] in recorded:
                continue
            patch = self.ws.state / "runs" / str(intent["id"]) / "diff.patch"
            if intent.get("commit") and intent.get("parent") and not patch.exists():
                patch.parent.mkdir(parents=True, exist_ok=True)
                patch.write_text(self.ws.diff(intent["parent"], intent["commit"]), encoding="utf-8")
            self._append(interrupted_record(intent, self.history.best_metric, self.config.experiment.run))
            self.progress.warn(f"experiment {intent['id']} was interrupted; recorded as 'interrupted'")
        # A keep whose record landed but whose branch move did not: finish the move.
        kept = [r for r in self.history.records if r["status"] == "keep"]
        if kept:
            last = kept[-1]
            head = self.ws.branch_head(self.tag)
            if head != last["commit"] and head == last["parent"]:
                self.ws.keep(self.tag, last["commit"], last["parent"])
        if pending or reset_checkout is None:
            self.ws.reset(reset_checkout or self.ws.worktree)
        self.intents.clear_all()

    # ---- state -----------------------------------------------------------------------------------
    @property
    def history(self) -> History:
        return History(self.ledger.experiments())

    def best(self) -> tuple[float | None, dict[str, Any] | None]:
        best_rec = self.history.best
        return (best_rec["metric"] if best_rec else None), best_rec

    def noise(self) -> float | None:
        """Run-to-run std of the metric at the current best, as the judge measures it (judge.py):
        from the repeats nearest the best, never from a plausibility re-run; None before the baseline."""
        return judging.noise_at_best(self.ledger.experiments(), self.config.metric.name, self.config.judge)

    def has_baseline(self) -> bool:
        return self.history.baseline is not None

    def tried_trees(self) -> dict[str, int]:
        """Tree -> the experiment that ran (or is running) that exact code."""
        return {**self.history.tried_trees, **{e.candidate.tree: e.id for e in self.in_flight.values()}}

    def next_id(self) -> int:
        """The id the next experiment gets: after every recorded one and every one in flight."""
        return max([self.history.next_id, *[i + 1 for i in self.in_flight], *[i + 1 for i in self.reserved]])

    # ---- running ---------------------------------------------------------------------------------
    def run_setup(self) -> None:
        cmd = self.config.experiment.setup.strip()
        if not cmd:
            return
        self.progress.info(f"setup: {cmd}")
        log = self.ws.state / "setup.log"
        env = experiment_env(budget_s=int(self.config.experiment.budget), artifacts=self.ws.state / "setup-artifacts", run_id="setup", seed=0)
        (self.ws.state / "setup-artifacts").mkdir(parents=True, exist_ok=True)
        self.progress.begin("setup", "setup")
        try:
            res = run_process(cmd, cwd=self.ws.exp_dir, env=env, timeout=max(self.config.experiment.timeout, 3600), log_path=log,
                              on_line=self.progress.output)
        finally:
            self.progress.end()
        if res.interrupted:
            raise KeyboardInterrupt
        if not res.ok:
            raise UserError(f"setup command {cmd!r} failed (exit {res.exit_code}); see {log} and fix it, then run again")

    @property
    def evaluator_files(self) -> list[str]:
        """What `evaluate` sees of the experiment folder: the protected files and the hidden files
        inside the folder (its held-out data), as committed. Never the editable code."""
        inside = [h for h in self.config.experiment.hidden if not h.startswith(("/", "~", "$"))]
        hidden = self.ws.expand(inside, self.ws.worktree if self.tag else None, key="hidden") if inside else []
        return sorted(set(self.protected) | set(hidden))

    @property
    def trials(self) -> TrialRunner:
        """The trial runner of this run (its file lists are fixed once the run is open)."""
        runner = TrialRunner(self.ws, self.config, editable=self.editable, protected=self.protected,
                             evaluator_files=self.evaluator_files, secrets=self.proposer_secrets(), limits=self.limits,
                             events=self.progress)
        runner.baseline_walls = self.history.baseline_walls()
        return runner

    def main_slot(self, checkout: Path | None = None) -> Slot:
        """The one-worker loop's slot: the run's worktree (or CHECKOUT) and .autoresearch/evaluator/."""
        return Slot(checkout=checkout or self.ws.worktree, scratch=self.ws.state / "evaluator")

    def proposer_secrets(self) -> list[str]:
        named = self.config.proposer.api_key_env
        return [named] if named else ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]

    def run_trial(self, runner: TrialRunner, spec: TrialSpec, slot: Slot) -> Measured:
        m = runner.run(spec, slot)
        if m.sandbox_warning and not self._sandbox_warned:
            self._sandbox_warned = True
            self.progress.warn(m.sandbox_warning)
        return m

    def begin(self, candidate: Candidate, *, description: str, proposer: str, proposal: dict[str, Any],
              baseline: bool = False, exp_id: int | None = None) -> Experiment:
        """Give the experiment its id, write its intent (before anything runs) and return it; its
        checkout is made ready by `prepare`, on the worker that runs it."""
        assert self.tag
        exp_id = self.next_id() if exp_id is None else exp_id
        run_dir = self.ws.state / "runs" / str(exp_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in run_dir.iterdir():  # outputs of an interrupted attempt; the proposer's prompts stay
            if old.name.startswith(("run", "evaluate", "artifacts", "guard")) or old.name == "diff.patch":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        (run_dir / "diff.patch").write_text(candidate.diff, encoding="utf-8")
        exp = Experiment(self.config, exp_id, candidate, description=description, proposer=proposer, proposal=proposal,
                         basis=Basis.of(self.history, self.config, baseline=baseline), run_dir=run_dir,
                         baseline=baseline,
                         on_start=lambda pgid: self.intents.write(exp_id, pgid=pgid), info=self.progress.info)
        self.intents.write(exp_id, id=exp_id, parent=candidate.parent, commit=candidate.commit, tree=candidate.tree,
                           diff_sha256=candidate.diff_sha256, description=description, proposer=proposer,
                           proposal=proposal, start=exp.start, pgid=None)
        self.in_flight[exp_id] = exp
        return exp

    def conclude(self, exp: Experiment, *, keep_checkout: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record the experiment (once: a result that arrives twice is recorded once); at a keep,
        move the branch and KEEP_CHECKOUT to it, only after the record is on disk."""
        self.in_flight.pop(exp.id, None)
        if exp.id in self.history.ids():
            self.intents.clear(exp.id)
            return next(r for r in self.history.records if r["id"] == exp.id)
        record = self._append(exp.record(extra))
        if record["status"] == "keep":
            self.ws.keep(self.tag, exp.candidate.commit, exp.candidate.parent, keep_checkout)
        self.intents.clear(exp.id)
        self.progress.experiment_done(record)
        return record

    def execute(self, candidate: Candidate, *, description: str, proposer: str, proposal: dict[str, Any],
                checkout: Path | None = None, baseline: bool = False, keep_checkout: Path | None = None) -> dict[str, Any]:
        """Run, judge and record one experiment whose code is committed as `candidate`, in `checkout`
        (made exactly the candidate's files first), one trial after another. At a keep,
        `keep_checkout` (default: the same) is moved to the new best."""
        slot = self.main_slot(checkout)
        exp = self.begin(candidate, description=description, proposer=proposer, proposal=proposal, baseline=baseline)
        self.ws.scrub(slot.checkout, candidate.commit, keep=self.config.experiment.cache)
        runner = self.trials
        while (spec := exp.next_trial()) is not None:
            exp.absorb(self.run_trial(runner, spec, slot))
        record = self.conclude(exp, keep_checkout=keep_checkout or slot.checkout)
        if exp.interrupted:
            raise Stop()
        return record

    def record_invalid(self, reason: str, *, description: str, proposer: str, proposal: dict[str, Any], status: str = "invalid") -> dict[str, Any]:
        """A proposal that never ran: it could not be applied, or it changed what it may not."""
        record = self._append(invalid_record(self.config, self.next_id(), reason, description=description, proposer=proposer,
                                             proposal=proposal, parent=self.ws.branch_head(self.tag),  # type: ignore[arg-type]
                                             best=self.history.best_metric, status=status))
        self.progress.experiment_done(record)
        return record

    def measure_baseline(self) -> dict[str, Any]:
        self.ws.reset()
        self.run_setup()
        head = self.ws.head()
        candidate = Candidate(head, head, self.ws.tree_of(head), "", EMPTY_DIFF_SHA256, [])
        rec = self.execute(candidate, description="baseline", proposer="baseline", proposal={}, baseline=True)
        if rec["status"] != "baseline":
            raise UserError(
                f"the baseline failed ({rec['status']}: {rec['reason']}); see {self.ws.state / 'runs' / str(rec['id'])} "
                "and fix the experiment, then run again"
            )
        return rec

    def remeasure(self, rec: dict[str, Any]) -> tuple[float | None, str]:
        """Run a recorded commit again, in a scratch checkout, with the seeds it was measured with.
        Returns the mean metric (None on failure) and a status word. Nothing is recorded."""
        scratch = self.ws.scratch_checkout(self.ws.state / "rerun" / str(rec["id"]), rec["commit"])
        run_dir = self.ws.state / "runs" / f"rerun-{rec['id']}"
        slot = Slot(checkout=scratch, scratch=self.ws.state / "evaluator")
        runner = self.trials
        try:
            seeds = rec.get("seeds") or [0]
            values = []
            for k, seed in enumerate(seeds):
                spec = TrialSpec(exp_id=rec["id"], k=k, commit=rec["commit"], expected_head=rec["commit"], run_dir=run_dir,
                                 seed=seed, repeats=len(seeds))
                m = self.run_trial(runner, spec, slot)
                bad = judging.failure(m.outcome, self.config.metric.name)
                if bad is not None:
                    return None, f"{bad.status}: {bad.reason}"
                values.append(m.outcome.metric)
            return statistics.fmean(values), "ok"
        finally:
            self.ws.drop_checkout(scratch)


UNPINNED = ("proposer", "evidence", "resources")  # config sections that may change while a run goes on


def config_digest(config: dict[str, Any]) -> str:
    import hashlib

    from .signing import canonical_json

    return hashlib.sha256(canonical_json({k: v for k, v in config.items() if k not in UNPINNED})).hexdigest()


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(a):  # a key the start record lacks came with a newer autoresearch
            out += _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _context(session: Session, feedback: str = "", *, checkout: Path | None = None, exp_id: int | None = None) -> Context:
    """What a proposer sees: the code at the best (in the run's worktree, or CHECKOUT: a worker's
    own agent checkout), the history, and the experiments running now."""
    exp_id = session.next_id() if exp_id is None else exp_id
    run_dir = session.ws.state / "runs" / str(exp_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    best, best_rec = session.best()
    return Context(
        config=session.config,
        root=session.root,
        worktree=session.ws.in_tree(checkout) if checkout else session.ws.exp_dir,
        files=session.ws.read_files(session.editable, checkout),
        history=session.ledger.experiments(),
        best=best_rec,
        noise=session.noise(),
        run_dir=run_dir,
        experiment_id=exp_id,
        feedback=feedback,
        in_flight=[{"id": e.id, "description": e.description, "proposal": e.proposal} for e in session.in_flight.values()],
    )


def commit_proposal(session: Session, proposer: Proposer, proposal: Proposal,
                    checkout: Path | None = None) -> Candidate | dict[str, Any]:
    """Commit the proposal's edits as a candidate on CHECKOUT's HEAD (the run's worktree: the best),
    then put the checkout back. Returns the candidate, or the record of an edit that may not run."""
    try:
        session.ws.reset(checkout)  # an agent proposer edits the checkout itself; its edits come back as text
        changed = session.ws.write_edits(proposal.edits, session.config.experiment.editable, checkout)
        return session.ws.commit_candidate(proposal.description, changed, checkout)
    except ProposalInvalid as err:
        rec = session.record_invalid(str(err), description=proposal.description, proposer=proposer.name, proposal=proposal.meta)
        proposer.observe(rec)
        return rec
    finally:
        session.ws.reset(checkout)


def duplicate_feedback(session: Session, proposal: Proposal, seen: int) -> str:
    session.progress.info(f"proposal identical to experiment {seen}; asking for another")
    return (f"The proposal '{proposal.description}' produces code identical to experiment {seen}, which already "
            "ran (or is running). Propose a different change.")


def record_duplicate(session: Session, proposer: Proposer, proposal: Proposal, seen: int) -> dict[str, Any]:
    rec = session.record_invalid(f"duplicate: identical to experiment {seen}, {MAX_DUPLICATE_RETRIES + 1} times",
                                 description=proposal.description, proposer=proposer.name, proposal=proposal.meta)
    proposer.observe(rec)
    return rec


def record_no_proposal(session: Session, proposer: Proposer, err: ProposalInvalid) -> dict[str, Any]:
    rec = session.record_invalid(str(err), description="(no valid proposal)", proposer=proposer.name,
                                 proposal=err.meta)  # tokens spent still count
    proposer.observe(rec)
    return rec


def propose(session: Session, proposer: Proposer) -> tuple[Candidate, Proposal] | dict[str, Any]:
    """Ask the proposer for a change and commit it as a candidate on the current best (in the
    run's worktree, which is then reset). Returns the candidate, or the record of a proposal that
    could not run (already observed by the proposer)."""
    feedback = ""
    for attempt in range(MAX_DUPLICATE_RETRIES + 1):
        ctx = _context(session, feedback)
        try:
            proposal: Proposal = proposer.propose(ctx)
        except ProposalInvalid as err:
            session.ws.reset()
            return record_no_proposal(session, proposer, err)
        candidate = commit_proposal(session, proposer, proposal)
        if isinstance(candidate, dict):
            return candidate
        seen = session.tried_trees().get(candidate.tree)
        if seen is None:
            return candidate, proposal
        feedback = duplicate_feedback(session, proposal, seen)
    return record_duplicate(session, proposer, proposal, seen)


def step(session: Session, proposer: Proposer) -> dict[str, Any]:
    """One experiment driven by a proposer."""
    got = propose(session, proposer)
    if isinstance(got, dict):
        return got
    candidate, proposal = got
    try:
        rec = session.execute(candidate, description=proposal.description, proposer=proposer.name, proposal=proposal.meta)
    finally:
        session.ws.reset()
    proposer.observe(rec)
    return rec


def run_loop(
    root: Path,
    *,
    max_experiments: int | None = None,
    max_time: float | None = None,
    max_cost: float | None = None,
    proposer: str | None = None,
    tag: str | None = None,
    new: bool = False,
    progress: Progress | None = None,
    learn_from: list[Path] | None = None,
    resources: dict[str, Any] | None = None,
) -> LoopSummary:
    """Run (or resume) the loop in ROOT until a stop condition, Ctrl-C, or forever. LEARN_FROM:
    folders of other runs whose experiments the proposer may learn from (never recorded here).
    RESOURCES: overrides of [resources] (workers, cpus_per_worker, gpus_per_worker, backend, address)."""
    session = Session(root, progress=progress)
    if proposer:
        session.config.proposer = session.config.proposer.model_copy(update={"kind": proposer})
    if resources:
        session.config.resources = session.config.resources.model_validate(
            {**session.config.resources.model_dump(), **{k: v for k, v in resources.items() if v is not None}})
    started = time.monotonic()
    done = kept = 0
    _sigterm_as_interrupt()
    stopped_by = "max-experiments"
    recheck = holdout.Rescorer(session)  # kept winners re-scored on the holdout split (holdout.py)
    with session.locked():
        session.open(tag=tag, new=new)
        session.progress.info(f"run key fingerprint: {fingerprint(session.ledger.signer.public_key)} (to check an exported bundle "
                              "against: `autoresearch verify --bundle B --key FINGERPRINT`)")
        session.progress.start(tag=session.tag or "", worktree=session.ws.worktree, recorded=len(session.ledger.experiments()),
                               metric=session.config.metric.name, goal=session.config.metric.goal,
                               proposer=session.config.proposer.kind, max_experiments=max_experiments, max_time=max_time)
        try:
            if not session.has_baseline():
                session.measure_baseline()
            prop = create(session.config, session.ledger.experiments(), learn_from=learn_from, warn=session.progress.warn)

            def may_start(started_so_far: int) -> bool:
                nonlocal stopped_by
                if max_experiments is not None and started_so_far >= max_experiments:
                    stopped_by = "max-experiments"
                    return False
                if max_time is not None and time.monotonic() - started >= max_time:
                    stopped_by = "max-time"
                    return False
                if max_cost is not None and session.history.cost >= max_cost:
                    stopped_by = "max-cost"
                    return False
                return True

            def landed(rec: dict[str, Any]) -> None:
                nonlocal done, kept
                done += 1
                kept += rec["status"] == "keep"
                if rec["status"] == "keep":
                    recheck.after_keep()

            res = session.config.resources
            try:
                if res.workers > 1 or res.backend != "local":
                    from .workers import Coordinator, RayBackend, plan_slots, ray_slots

                    backend = None
                    if res.backend == "ray":
                        slots, cpus, gpus = ray_slots(res, session.ws.state)
                        backend = RayBackend(res, cpus, gpus)
                        session.progress.info(f"{len(slots)} workers on Ray ({res.address or 'a local cluster'}), "
                                              f"{cpus} core(s) and {gpus} GPU(s) each")
                    else:
                        slots = plan_slots(res, session.ws.state)
                        session.progress.info(f"{len(slots)} workers: " + "; ".join(
                            f"{sl.name} cores {','.join(map(str, sl.cpus or []))}"
                            + (f" GPUs {sl.env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in sl.env else "")
                            for sl in slots))
                    Coordinator(session, prop, slots, may_start, propose, on_record=landed, backend=backend,
                                make_proposer=lambda: create(session.config, session.ledger.experiments(),
                                                             learn_from=learn_from)).run()
                while res.workers == 1 and res.backend == "local":
                    if not may_start(done):
                        break
                    landed(step(session, prop))
            finally:
                prop.close()
        except (Stop, KeyboardInterrupt):
            stopped_by = "interrupted"
            if session.intents.all():  # interrupted outside the runner's own handling
                session.recover()
            session.ws.reset()
        recheck.at_stop()
    best, _ = session.best()
    base = next((r["metric"] for r in session.ledger.experiments() if r["status"] == "baseline"), None)
    summary = LoopSummary(session.tag or "", done, kept, best, base, stopped_by,
                          notes=recheck.notes() + session.witness_and_head())
    session.progress.finish(summary)
    return summary


def _sigterm_as_interrupt() -> None:
    """`kill` and service managers send SIGTERM: stop as cleanly as on Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)
