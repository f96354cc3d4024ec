"""The loop: propose -> apply -> run -> evaluate -> measure -> judge -> record -> keep or discard.

`Session` owns one experiment folder's run: it opens or resumes it, recovers from a harness that
was killed, measures the baseline, and executes experiments. `run_loop` drives proposers through it;
`try_change` is the agent-driven mode, where a coding agent edits the checkout and the harness does
everything else.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import statistics
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from . import judge as judging
from . import metrics as metric_io
from .config import Config, load_config
from .errors import ProposalInvalid, UserError
from .hostinfo import host_info
from .ledger import Ledger
from .progress import LoopSummary, Progress
from .proposers import Context, Proposal, Proposer, create
from .sandbox import Limits, SandboxSpec
from .signing import Signer, fingerprint, key_dir
from .runner import ProcessResult, experiment_env, group_alive, kill_group, run_process
from .workspace import BRANCH_PREFIX, Candidate, Workspace, git, sha256_file

EMPTY_DIFF_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b"": the baseline's diff
MAX_RERUNS = 2  # confirmation / plausibility re-runs per experiment
MAX_DUPLICATE_RETRIES = 3


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Stop(Exception):
    """Ctrl-C reached the harness while an experiment ran; it has been recorded."""


@dataclass
class Measured:
    outcome: judging.RunOutcome
    info: dict[str, Any]
    result: ProcessResult
    metrics: dict[str, float]


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
        for name in ("ledger.jsonl", "results.tsv", "runs", "pending.json", "progress.png", "report.html", "timestamps"):
            if (self.ws.state / name).exists():
                shutil.move(str(self.ws.state / name), str(dest / name))
        self.ws.remove_worktree()
        self.ws.drop_checkout(self.ws.state / "try-checkout")
        self.ledger = Ledger(self.ws.state, signer=self.ledger.signer)
        self.progress.info(f"archived the previous run to {dest}")

    @property
    def _pending_path(self) -> Path:
        return self.ws.state / "pending.json"

    def recover(self, reset_checkout: Path | None = None) -> None:
        """Bring disk, git and ledger back into agreement after a harness that died mid-experiment."""
        assert self.tag
        records = self.ledger.experiments()
        if not self.ledger.results_agree():
            self.ledger.rewrite_results()
        pending = None
        if self._pending_path.exists():
            try:
                pending = json.loads(self._pending_path.read_text())
            except ValueError:
                pending = None
        if pending and pending.get("pgid") and group_alive(pending["pgid"]):
            kill_group(pending["pgid"], grace=1.0)
        if pending and pending.get("id") == len(records):
            patch = self.ws.state / "runs" / str(pending["id"]) / "diff.patch"
            if pending.get("commit") and pending.get("parent") and not patch.exists():
                patch.parent.mkdir(parents=True, exist_ok=True)
                patch.write_text(self.ws.diff(pending["parent"], pending["commit"]), encoding="utf-8")
            self._append({
                "kind": "experiment",
                "id": pending["id"],
                "status": "interrupted",
                "reason": "the harness stopped (Ctrl-C, killed or crashed) while this experiment ran",
                "description": pending.get("description", ""),
                "proposer": pending.get("proposer", ""),
                "proposal": pending.get("proposal", {}),
                "parent": pending.get("parent"),
                "commit": pending.get("commit"),
                "tree": pending.get("tree"),
                "diff_sha256": pending.get("diff_sha256"),
                "metric": None, "metrics": {}, "runs": [],
                "best": self.best()[0], "delta": None,
                "start": pending.get("start"), "end": _now(),
            })
            self.progress.warn(f"experiment {pending['id']} was interrupted; recorded as 'interrupted'")
            records = self.ledger.experiments()
        # A keep whose record landed but whose branch move did not: finish the move.
        kept = [r for r in records if r["status"] in ("keep",)]
        if kept:
            last = kept[-1]
            head = self.ws.branch_head(self.tag)
            if head != last["commit"] and head == last["parent"]:
                self.ws.keep(self.tag, last["commit"], last["parent"])
        if pending is not None or reset_checkout is None:
            self.ws.reset(reset_checkout or self.ws.worktree)
        self._pending_path.unlink(missing_ok=True)

    # ---- state -----------------------------------------------------------------------------------
    def best(self) -> tuple[float | None, dict[str, Any] | None]:
        best_rec = None
        for rec in self.ledger.experiments():
            if rec["status"] in ("baseline", "keep"):
                best_rec = rec
        return (best_rec["metric"] if best_rec else None), best_rec

    def noise(self) -> float | None:
        """Run-to-run std of the metric at the current best, as the judge measures it (judge.py):
        from the repeats nearest the best, never from a plausibility re-run; None before the baseline."""
        return judging.noise_at_best(self.ledger.experiments(), self.config.metric.name, self.config.judge)

    def has_baseline(self) -> bool:
        return any(r["status"] == "baseline" for r in self.ledger.experiments())

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

    def _run_once(self, exp_id: int, k: int, run_dir: Path, checkout: Path, editable_hashes: dict, protected_hashes: dict,
                  *, commit: str, track: bool = True, seed: int | None = None, repeats: int = 1,
                  eta_s: float | None = None) -> Measured:
        """One repeat: the checkout is made exactly `commit`'s files, `run` runs in it, then
        `evaluate` runs from a fresh copy of the protected files; the harness reads the metric."""
        exp = self.config.experiment
        suffix = "" if k == 0 else f"-{k + 1}"
        artifacts = run_dir / f"artifacts{suffix}"
        if artifacts.exists():
            shutil.rmtree(artifacts)
        artifacts.mkdir(parents=True)
        seed = k if seed is None else seed
        env = experiment_env(budget_s=int(exp.budget) if exp.budget == int(exp.budget) else exp.budget,
                             artifacts=artifacts, run_id=f"{exp_id}{suffix}", seed=seed)
        for name in self._proposer_secrets():  # the proposer's API key never reaches the experiment
            env.pop(name, None)
        cwd = self.ws.in_tree(checkout)
        self.ws.scrub(checkout, commit, keep=exp.cache)  # nothing a previous experiment left behind
        cache_before = {rel: self.ws.hash_folder(checkout, rel) for rel in exp.cache}

        def note_pgid(pgid: int) -> None:
            if track:
                self._update_pending(pgid=pgid)

        label = f"[{exp_id}] repeat {k + 1}/{repeats}"
        self.progress.begin(label, "run", budget_s=exp.budget, eta_s=eta_s)
        try:
            res = run_process(exp.run, cwd=cwd, env=env, timeout=exp.timeout, log_path=run_dir / f"run{suffix}.log",
                              max_log_bytes=int(exp.max_log_mb * 1024 * 1024), on_start=note_pgid, on_line=self.progress.output,
                              sandbox=self._sandbox_spec(cwd, artifacts, evaluate=False))
            self._warn_sandbox(res)
            run_metrics = metric_io.collect(res.output, artifacts)
            step, final, eval_metrics, eval_start_s = "run", res, None, None
            if exp.evaluate.strip() and res.ok:
                self.progress.begin(label, "evaluate", eta_s=None if eta_s is None else eta_s - res.wall_s)
                t0 = time.monotonic()
                fresh = self.ws.export_files(commit, self._evaluator_files, self.ws.state / "evaluator" / "checkout")
                eval_start_s = time.monotonic() - t0
                eres = run_process(exp.evaluate, cwd=fresh, env=self._evaluate_env(env), timeout=exp.timeout,
                                   log_path=run_dir / f"evaluate{suffix}.log", max_log_bytes=int(exp.max_log_mb * 1024 * 1024),
                                   on_start=note_pgid, on_line=self.progress.output,
                                   sandbox=self._sandbox_spec(fresh, artifacts, evaluate=True))
                eval_metrics = metric_io.parse_text(eres.output)
                step, final = "evaluate", eres
        finally:
            self.progress.end()
        metrics = eval_metrics if eval_metrics is not None else run_metrics
        primary = None if (exp.evaluate.strip() and eval_metrics is None) else metrics.get(self.config.metric.name)
        problem = self._guard(checkout, editable_hashes, protected_hashes)
        allowance, allowance_rule = judging.wall_allowance(exp.budget, self._baseline_walls, tolerance=exp.wall_tolerance,
                                                           grace=exp.budget_grace)
        over = res.ok and res.wall_s > allowance
        outcome = judging.RunOutcome(
            metric=primary,
            exit_code=final.exit_code,
            timed_out=final.timed_out,
            failed_step=step if final is not res or not res.ok else "run",
            last_line=(final.tail(1) if not final.ok else ""),
            over_budget=over,
            wall_s=res.wall_s,
            allowance_s=allowance,
            problem=problem,
            seed=seed,
        )
        if not res.ok:
            outcome.failed_step, outcome.exit_code, outcome.timed_out = "run", res.exit_code, res.timed_out
            outcome.last_line = res.tail(1)
        vram = metrics.get("peak_vram_mb", run_metrics.get("peak_vram_mb"))
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
            "peak_vram_mb": vram,
            "timed_out": res.timed_out or final.timed_out,
            "metrics": metric_io.jsonable(metrics),
            "sandbox": res.sandbox,
            "enforced": res.extra.get("enforced", {}),
            "log_sha256": sha256_file(res.log_path),
            "output_bytes": res.output_bytes,
        }
        if exp.cache:
            info["cache_sha256"] = {"before": cache_before,
                                    "after": {rel: self.ws.hash_folder(checkout, rel) for rel in exp.cache}}
        if eval_metrics is not None:
            info["run_metrics"] = metric_io.jsonable(run_metrics)  # recorded, never counted
        if res.interrupted or final.interrupted:
            info["interrupted"] = True
        return Measured(outcome, info, final if not res.ok or final is not res else res, metrics)

    @property
    def _evaluator_files(self) -> list[str]:
        """What `evaluate` sees of the experiment folder: the protected files and the hidden files
        inside the folder (its held-out data), as committed. Never the editable code."""
        inside = [h for h in self.config.experiment.hidden if not h.startswith(("/", "~", "$"))]
        hidden = self.ws.expand(inside, self.ws.worktree if self.tag else None, key="hidden") if inside else []
        return sorted(set(self.protected) | set(hidden))

    @property
    def _baseline_walls(self) -> list[float]:
        """The baseline's measured wall times (the reference a candidate's wall time is judged against)."""
        base = next((r for r in self.ledger.experiments() if r["status"] == "baseline"), None)
        return [r["wall_s"] for r in (base or {}).get("runs", []) if isinstance(r.get("wall_s"), (int, float))]

    def _evaluate_env(self, env: dict[str, str]) -> dict[str, str]:
        """`evaluate` runs Python with a bytecode cache of its own, out of `run`'s sight: a `.pyc`
        that `run` planted is never read (and the fresh checkout has no `__pycache__` at all)."""
        pycache = self.ws.state / "evaluator" / "pycache"
        pycache.mkdir(parents=True, exist_ok=True)
        out = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE",
                                                         "PYTHONDONTWRITEBYTECODE")}
        # Written, so that only the first evaluation compiles its imports (torch: ~5 s of CPU).
        out["PYTHONPYCACHEPREFIX"] = str(pycache)
        out["PYTHONNOUSERSITE"] = "1"
        return out

    def _sandbox_spec(self, workdir: Path, artifacts: Path, *, evaluate: bool) -> SandboxSpec:
        """What `run` (or `evaluate`) may see and touch. The whole state folder (ledger, other
        checkouts, other experiments' outputs), the signing key and, for `run`, the `hidden` paths
        and the home folder are out of sight; protected files are read-only. `evaluate` works in a
        fresh read-only copy of the protected files and reads the artifacts as data."""
        exp = self.config.experiment
        state = self.ws.state
        hidden: list[Path] = [state, key_dir()]
        readonly: list[Path] = []
        writable: list[Path] = []
        visible: list[Path] = []
        if evaluate:
            pycache = state / "evaluator" / "pycache"
            readonly += [workdir, artifacts]
            writable.append(pycache)
        else:
            readonly += [workdir / rel for rel in self.protected]
            writable.append(artifacts)
            for entry in exp.hidden:
                if entry.startswith(("/", "~", "$")):  # data outside the folder, e.g. a cached validation split
                    hidden += _glob_paths(entry)
                else:
                    hidden += [workdir / rel for rel in self.ws.expand([entry], self.ws.repo, key="hidden")]
                    hidden += [self.ws.root / rel for rel in self.ws.expand([entry], self.ws.repo, key="hidden")]
                    hidden.append(self.ws.git_dir())  # a tracked hidden file could be read from git's objects
            for entry in exp.visible:
                visible += _glob_paths(entry)
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

    def _proposer_secrets(self) -> list[str]:
        named = self.config.proposer.api_key_env
        return [named] if named else ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]

    def _warn_sandbox(self, res: ProcessResult) -> None:
        if res.sandbox_warning and not self._sandbox_warned:
            self._sandbox_warned = True
            self.progress.warn(res.sandbox_warning)

    def _guard(self, checkout: Path, editable_hashes: dict, protected_hashes: dict) -> str:
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
        head = git("rev-parse", "HEAD", cwd=checkout, check=False).strip()
        if head != self._expected_head:
            return "the experiment moved HEAD or damaged the repository of its checkout"
        return ""

    def _update_pending(self, **fields: Any) -> None:
        data = {}
        if self._pending_path.exists():
            try:
                data = json.loads(self._pending_path.read_text())
            except ValueError:
                pass
        data.update(fields)
        tmp = self._pending_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._pending_path)

    def execute(self, candidate: Candidate, *, description: str, proposer: str, proposal: dict[str, Any],
                checkout: Path | None = None, baseline: bool = False, keep_checkout: Path | None = None) -> dict[str, Any]:
        """Run, judge and record one experiment whose code is committed as `candidate`, in `checkout`
        (made exactly the candidate's files first). At a keep, `keep_checkout` (default: the same)
        is moved to the new best."""
        assert self.tag
        checkout = checkout or self.ws.worktree
        self.ws.scrub(checkout, candidate.commit, keep=self.config.experiment.cache)
        exp_id = len(self.ledger.experiments())
        run_dir = self.ws.state / "runs" / str(exp_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in run_dir.iterdir():  # outputs of an interrupted attempt; the proposer's prompts stay
            if old.name.startswith(("run", "evaluate", "artifacts")) or old.name == "diff.patch":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        (run_dir / "diff.patch").write_text(candidate.diff, encoding="utf-8")
        start = _now()
        self._update_pending(id=exp_id, parent=candidate.parent, commit=candidate.commit, tree=candidate.tree,
                             diff_sha256=candidate.diff_sha256, description=description, proposer=proposer,
                             proposal=proposal, start=start, pgid=None)
        self._expected_head = candidate.parent
        editable_hashes = self.ws.hash_files(self.editable, checkout)
        protected_hashes = self.ws.hash_files(self.protected, checkout)
        best, best_rec = self.best()
        noise = self.noise()
        model = judging.noise_model(self.ledger.experiments(), self.config.metric.name, best) if not baseline else None
        best_runs = judging.repeats(best_rec, self.config.metric.name) if best_rec else None
        runs: list[Measured] = []
        n_first = self.config.judge.baseline_runs if baseline else 1
        verdict: judging.Verdict | None = None
        interrupted = False
        while True:
            todo = n_first if not runs else 1
            for i in range(todo):
                # The baseline's first line of progress says when its first result is due.
                eta = self.config.experiment.budget * 1.05 if baseline and not runs else None
                m = self._run_once(exp_id, len(runs), run_dir, checkout, editable_hashes, protected_hashes,
                                   commit=candidate.commit, repeats=len(runs) + todo - i, eta_s=eta)
                runs.append(m)
                if m.info.get("interrupted"):
                    interrupted = True
                    break
                if judging.failure(m.outcome, self.config.metric.name):
                    break
            if interrupted:
                break
            verdict = judging.decide([m.outcome for m in runs], metric_name=self.config.metric.name,
                                     maximize=self.config.maximize, judge=self.config.judge,
                                     best=best, noise=noise, baseline=baseline, model=model, best_runs=best_runs,
                                     max_runs=MAX_RERUNS + 1)
            if verdict.status == "rerun" and len(runs) <= MAX_RERUNS:
                self.progress.info(f"experiment {exp_id}: {verdict.reason}")
                continue
            if verdict.status == "rerun":
                verdict = judging.Verdict("discard", verdict.reason + "; no re-run budget left", verdict.metric)
            break
        if interrupted:
            verdict = judging.Verdict("interrupted", "stopped by Ctrl-C; the experiment's processes were killed")
        assert verdict is not None
        values = [m.outcome.metric for m in runs if m.outcome.metric is not None]
        metric = verdict.metric if verdict.status in ("baseline", "keep", "discard", "suspicious") else None
        if verdict.status in ("keep", "baseline"):
            new_best = metric
        else:
            new_best = best
        first = runs[0] if runs else None
        vram = first.info.get("peak_vram_mb") if first else None
        rss = max((m.info["peak_rss_mb"] for m in runs), default=0.0)
        memory_gb = (vram / 1024) if isinstance(vram, (int, float)) else rss / 1024
        record: dict[str, Any] = {
            "kind": "experiment",
            "id": exp_id,
            "status": verdict.status,
            "reason": verdict.reason,
            "flags": list(verdict.flags),
            "description": description,
            "proposer": proposer,
            "proposal": proposal,
            "parent": candidate.parent,
            "commit": candidate.commit,
            "tree": candidate.tree,
            "diff_sha256": candidate.diff_sha256,
            "changed": candidate.changed,
            "metric": metric,
            "metrics": first.info["metrics"] if first else {},
            "runs": [m.info for m in runs],
            "best": new_best,
            "delta": (metric - best) if (metric is not None and best is not None and not baseline) else None,
            "noise_used": noise,
            "min_delta_used": (verdict.need if verdict.need is not None else judging.threshold(self.config.judge, noise))
            if not baseline else None,
            "noise_model": model.describe() if model is not None else None,
            "memory_gb": round(memory_gb, 3),
            "command": self.config.experiment.run,
            "evaluate": self.config.experiment.evaluate,
            "budget_s": self.config.experiment.budget,
            "protected": protected_hashes,
            "seeds": [m.info["seed"] for m in runs],
            "host": host_info(),
            "start": start,
            "end": _now(),
        }
        if baseline:
            record["noise"] = judging.noise_of(values) if verdict.status == "baseline" else None
        if verdict.status not in ("baseline", "keep", "discard") and runs:
            record["log_tail"] = runs[-1].result.tail()
        record = self._append(record)
        # The record is on disk; only now does the branch move.
        if verdict.status == "keep":
            self.ws.keep(self.tag, candidate.commit, candidate.parent, keep_checkout or checkout)
        self._pending_path.unlink(missing_ok=True)
        self.progress.experiment_done(record)
        if interrupted:
            raise Stop()
        return record

    def record_invalid(self, reason: str, *, description: str, proposer: str, proposal: dict[str, Any], status: str = "invalid") -> dict[str, Any]:
        """A proposal that never ran: it could not be applied, or it changed what it may not."""
        best, _ = self.best()
        parent = self.ws.branch_head(self.tag)  # type: ignore[arg-type]
        record = self._append({
            "kind": "experiment", "id": len(self.ledger.experiments()), "status": status, "reason": reason,
            "flags": [], "description": description, "proposer": proposer, "proposal": proposal,
            "parent": parent, "commit": None, "tree": None, "diff_sha256": None, "changed": [],
            "metric": None, "metrics": {}, "runs": [], "best": best, "delta": None, "memory_gb": 0.0,
            "command": self.config.experiment.run, "start": _now(), "end": _now(),
        })
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
        try:
            self._expected_head = rec["commit"]
            editable_hashes = self.ws.hash_files(self.editable, scratch)
            protected_hashes = self.ws.hash_files(self.protected, scratch)
            values = []
            for k, seed in enumerate(rec.get("seeds") or [0]):
                m = self._run_once(rec["id"], k, run_dir, scratch, editable_hashes, protected_hashes, commit=rec["commit"],
                                   track=False, seed=seed, repeats=len(rec.get("seeds") or [0]))
                bad = judging.failure(m.outcome, self.config.metric.name)
                if bad is not None:
                    return None, f"{bad.status}: {bad.reason}"
                values.append(m.outcome.metric)
            return statistics.fmean(values), "ok"
        finally:
            self.ws.drop_checkout(scratch)

    def tried_trees(self) -> dict[str, int]:
        return {r["tree"]: r["id"] for r in self.ledger.experiments() if r.get("tree") and r["status"] != "interrupted"}


UNPINNED = ("proposer", "evidence")  # config sections that may change while a run goes on


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


def _glob_paths(entry: str) -> list[Path]:
    """A config path (`~`, `$VAR`, globs) as the paths it names now; an unset variable names none."""
    expanded = os.path.expandvars(os.path.expanduser(entry))
    if "$" in expanded:
        return []
    return [Path(p) for p in glob.glob(expanded)]




def _context(session: Session, feedback: str = "") -> Context:
    exp_id = len(session.ledger.experiments())
    run_dir = session.ws.state / "runs" / str(exp_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    best, best_rec = session.best()
    return Context(
        config=session.config,
        root=session.root,
        worktree=session.ws.exp_dir,
        files=session.ws.read_files(session.editable),
        history=session.ledger.experiments(),
        best=best_rec,
        noise=session.noise(),
        run_dir=run_dir,
        experiment_id=exp_id,
        feedback=feedback,
    )


def step(session: Session, proposer: Proposer) -> dict[str, Any]:
    """One experiment driven by a proposer."""
    feedback = ""
    for attempt in range(MAX_DUPLICATE_RETRIES + 1):
        ctx = _context(session, feedback)
        try:
            proposal: Proposal = proposer.propose(ctx)
        except ProposalInvalid as err:
            session.ws.reset()
            rec = session.record_invalid(str(err), description="(no valid proposal)", proposer=proposer.name,
                                         proposal=err.meta)  # tokens spent still count
            proposer.observe(rec)
            return rec
        try:
            session.ws.reset()
            changed = session.ws.write_edits(proposal.edits, session.config.experiment.editable)
            candidate = session.ws.commit_candidate(proposal.description, changed)
        except ProposalInvalid as err:
            session.ws.reset()
            rec = session.record_invalid(str(err), description=proposal.description, proposer=proposer.name, proposal=proposal.meta)
            proposer.observe(rec)
            return rec
        seen = session.tried_trees().get(candidate.tree)
        if seen is None:
            break
        session.ws.reset()
        feedback = (f"The proposal '{proposal.description}' produces code identical to experiment {seen}, which already ran. "
                    "Propose a different change.")
        session.progress.info(f"proposal identical to experiment {seen}; asking for another")
    else:
        rec = session.record_invalid(f"duplicate: identical to experiment {seen}, {MAX_DUPLICATE_RETRIES + 1} times",
                                     description=proposal.description, proposer=proposer.name, proposal=proposal.meta)
        proposer.observe(rec)
        return rec
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
) -> LoopSummary:
    """Run (or resume) the loop in ROOT until a stop condition, Ctrl-C, or forever. LEARN_FROM:
    folders of other runs whose experiments the proposer may learn from (never recorded here)."""
    session = Session(root, progress=progress)
    if proposer:
        session.config.proposer = session.config.proposer.model_copy(update={"kind": proposer})
    started = time.monotonic()
    done = kept = 0
    _sigterm_as_interrupt()
    stopped_by = "max-experiments"
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
            try:
                while True:
                    if max_experiments is not None and done >= max_experiments:
                        stopped_by = "max-experiments"
                        break
                    if max_time is not None and time.monotonic() - started >= max_time:
                        stopped_by = "max-time"
                        break
                    if max_cost is not None and total_cost(session.ledger.experiments()) >= max_cost:
                        stopped_by = "max-cost"
                        break
                    rec = step(session, prop)
                    done += 1
                    kept += rec["status"] == "keep"
            finally:
                prop.close()
        except (Stop, KeyboardInterrupt):
            stopped_by = "interrupted"
            if session._pending_path.exists():  # interrupted outside the runner's own handling
                session.recover()
            session.ws.reset()
    best, _ = session.best()
    base = next((r["metric"] for r in session.ledger.experiments() if r["status"] == "baseline"), None)
    summary = LoopSummary(session.tag or "", done, kept, best, base, stopped_by, notes=session.witness_and_head())
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


def total_cost(records: list[dict[str, Any]]) -> float:
    return sum(float((r.get("proposal") or {}).get("cost_usd") or 0.0) for r in records)


def find_session_for_checkout(path: Path) -> tuple[Session, Path]:
    """From inside a checkout of a run branch, find the experiment folder that owns the run."""
    path = Path(path).resolve()
    top = git("rev-parse", "--show-toplevel", cwd=path, check=False).strip()
    if not top:
        raise UserError(f"{path} is not inside a git checkout; cd into the run's worktree (.autoresearch/worktree)")
    top_p = Path(top)
    common = Path(git("rev-parse", "--git-common-dir", cwd=path).strip())
    if not common.is_absolute():
        common = (path / common).resolve()
    main_repo = common.parent
    rel = path.relative_to(top_p)
    # The experiment folder is the nearest folder at or above `path` that holds autoresearch.toml.
    for candidate_rel in [rel, *rel.parents]:
        if (top_p / candidate_rel / "autoresearch.toml").is_file():
            root = main_repo / candidate_rel
            break
    else:
        raise UserError(f"no autoresearch.toml at or above {path}; run `autoresearch try` inside the run's worktree")
    session = Session(root)
    return session, top_p


def try_change(path: Path, description: str, progress: Progress | None = None,
               proposal: dict[str, Any] | None = None) -> dict[str, Any]:
    """Agent-driven mode: commit the checkout's uncommitted change to editable files, run, judge,
    record, and keep or reset. The agent never reports a number; the harness measures it."""
    session, checkout = find_session_for_checkout(path)
    if progress is not None:
        session.progress = progress
    if not description.strip():
        raise UserError("give a description of the change with -m \"what you tried\"")
    with session.locked():
        if not session.ledger.exists():
            raise UserError(f"no run in {session.root}; start one and measure the baseline with `autoresearch run {session.root} --max-experiments 0`")
        header = session.ledger.header() or {}
        session.tag = header.get("tag")
        session.ledger.signer = session._load_signer(header)
        session.check_config_pinned(header)
        branch = git("rev-parse", "--abbrev-ref", "HEAD", cwd=checkout).strip()
        if branch != f"{BRANCH_PREFIX}{session.tag}":
            raise UserError(
                f"{checkout} is on {branch!r}, not the run branch {BRANCH_PREFIX}{session.tag}; "
                f"work in {session.ws.worktree} (cd there and edit the editable files)"
            )
        session.recover(reset_checkout=checkout)
        if not session.has_baseline():
            raise UserError(f"no baseline yet; measure it with `autoresearch run {session.root} --max-experiments 0`")
        editable_patterns = session.config.experiment.editable
        changed = session.ws.changed_files(checkout)
        from .workspace import matches

        outside = [p for p in changed if not matches(p, editable_patterns)]
        inside = [p for p in changed if matches(p, editable_patterns)]
        if outside:  # the whole change goes, so the next try starts from the best code, not half of this one
            session.ws.restore(changed, checkout)
            rec = session.record_invalid(
                f"changed files outside editable: {', '.join(outside)}; the whole change was reverted",
                description=description, proposer="try", proposal={**(proposal or {}), "violations": outside}, status="rejected")
            return rec
        if not inside:
            raise UserError(f"no change to the editable files ({', '.join(editable_patterns)}) in {checkout}; edit them first")
        try:
            candidate = session.ws.commit_candidate(description, inside, checkout)
        except ProposalInvalid as err:
            session.ws.restore(inside, checkout)
            return session.record_invalid(f"{err} (reverted)", description=description, proposer="try", proposal=dict(proposal or {}),
                                          status="rejected")
        seen = session.tried_trees().get(candidate.tree)
        if seen is not None:
            raise UserError(f"this exact code already ran as experiment {seen}; try something different")
        # The experiment runs in a checkout of its own: the agent's shell, editor and scratch files
        # stay as they are, and nothing they leave behind reaches the run.
        scratch = session.ws.scratch_checkout(session.ws.state / "try-checkout", candidate.parent)
        try:
            rec = session.execute(candidate, description=description, proposer="try", proposal=dict(proposal or {}), checkout=scratch,
                                  keep_checkout=checkout)
        finally:
            if session.ws.head(checkout) != session.ws.branch_head(session.tag or ""):
                git("reset", "-q", "--hard", session.ws.branch_head(session.tag or ""), cwd=checkout)
            session.ws.restore(inside, checkout)
        return rec
