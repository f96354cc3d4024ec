"""Checking the evidence: `verify` (the record agrees with itself, git and the files on disk),
`verify --rerun` (re-measure claimed improvements on this machine), `export` / `verify --bundle`
(a self-contained evidence bundle checked elsewhere without the repository)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .ledger import Intents, LEDGER_NAME, RESULTS_NAME, Ledger, verify_chain
from .record import ADVANCES_BEST
from .timestamp import TOKEN_DIR
from .workspace import BRANCH_PREFIX, Workspace, git

BUNDLE_FORMAT = "autoresearch-evidence-1"


MAX_LISTED = 10  # problems listed in full; the rest are counted


@dataclass
class VerifyReport:
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    problems: int = 0

    def fail(self, text: str) -> None:
        # the first problem is the one that names the bad record
        self.problems += 1
        if self.problems <= MAX_LISTED:
            self.lines.append(f"FAIL {text}" if self.ok else f"     also: {text}")
        elif self.problems == MAX_LISTED + 1:
            self.lines.append("     (more problems follow; only the first are listed)")
        self.ok = False

    def note(self, text: str) -> None:
        self.lines.append(text)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha256_or_none(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


def _fingerprint_or_key(key: str) -> str:
    from .signing import fingerprint

    try:
        return fingerprint(key)
    except ValueError:
        return key


def _check_records(state: Path, rep: VerifyReport, tsa_ca: Path | None = None) -> list[dict[str, Any]] | None:
    """Checks that need only the state folder (or a bundle of it): chain, signatures, time-stamp
    tokens, patches, logs, protected manifest, results.tsv. Returns the records, or None when the
    chain is broken."""
    ledger = Ledger(state)
    chain = verify_chain(ledger.path)
    if not chain.ok:
        for problem in chain.problems:
            rep.fail(problem)
        return None
    _check_timestamps(state, chain.hashes, tsa_ca, rep)
    records = chain.parsed
    ledger.adopt(records, chain.hashes[-1] if chain.hashes else None)
    exps = [r for r in records if r.get("kind") == "experiment"]
    key = chain.public_key
    rep.note(f"chain: {chain.records} records linked, head {chain.hashes[-1][:16]}…" +
             (f", signed (key fingerprint {_fingerprint_or_key(key)[:16]}…)" if key else " (unsigned)"))
    if not key:
        rep.fail("the run's start record has no public key, so nothing is signed")
    ids = {r["id"] for r in exps}
    running = {i.get("id") for i in Intents(state).all()}  # in flight right now on a worker
    missing = sorted(set(range(max(ids, default=-1) + 1)) - ids - running)
    if missing:
        rep.fail(f"experiment {missing[0]} is missing from the ledger (ids {', '.join(map(str, missing[:5]))}"
                 f"{'…' if len(missing) > 5 else ''} have no record and are not running); records were removed")

    patches = logs = 0
    runs_dir = os.path.join(state, "runs")
    for rec in exps:
        run_dir = os.path.join(runs_dir, str(rec["id"]))
        if rec.get("diff_sha256") and rec["status"] != "baseline":
            patch = os.path.join(run_dir, "diff.patch")
            digest = _sha256_or_none(patch)
            if digest is None:
                rep.fail(f"experiment {rec['id']}: {patch} is missing")
            elif digest != rec["diff_sha256"]:
                rep.fail(f"experiment {rec['id']}: diff.patch does not match its recorded sha256")
            else:
                patches += 1
        for k, run in enumerate(rec.get("runs", [])):
            if not run.get("log_sha256"):
                continue
            log = os.path.join(run_dir, "run.log" if k == 0 else f"run-{k + 1}.log")
            digest = _sha256_or_none(log)
            if digest is not None:
                if digest != run["log_sha256"]:
                    rep.fail(f"experiment {rec['id']}: {os.path.basename(log)} does not match its recorded sha256")
                else:
                    logs += 1
    if rep.ok:
        rep.note(f"files: {patches} diffs and {logs} run logs match their recorded hashes")

    manifests = [(r["id"], r.get("protected")) for r in exps if r.get("protected")]
    if manifests:
        first_id, first = manifests[0]
        for exp_id, manifest in manifests[1:]:
            if manifest != first:
                changed = sorted(k for k in set(first) | set(manifest) if first.get(k) != manifest.get(k))
                rep.fail(f"experiment {exp_id}: protected files differ from experiment {first_id}: {', '.join(changed)}")
                break
        else:
            rep.note(f"protected: {len(first)} files identical across {len(manifests)} experiments")

    if not ledger.results_agree():
        rep.fail(f"{RESULTS_NAME} does not agree with the ledger (edited by hand?)")
    else:
        rep.note(f"{RESULTS_NAME}: {len(exps)} rows agree with the ledger")
    _check_holdout(records, runs_dir, rep)
    return records


def _check_holdout(records: list[dict[str, Any]], runs_dir: str, rep: VerifyReport) -> None:
    """Holdout records (holdout.py): each re-scores a baseline or kept experiment recorded before it,
    once; its validation score is that record's; its mean is the mean of its values; its logs match.
    One line per record says what the holdout found."""
    import math
    import statistics

    from .holdout import KIND, SCORED, gain_lines, suffix

    seen: dict[int, dict[str, Any]] = {}
    scored: set[int] = set()
    n = 0
    for rec in records:
        if rec.get("kind") == "experiment":
            seen[rec["id"]] = rec
            continue
        if rec.get("kind") != KIND:
            continue
        n += 1
        exp_id = rec.get("experiment")
        target = seen.get(exp_id) if isinstance(exp_id, int) else None
        where = f"holdout record of experiment {exp_id}"
        if target is None or target.get("status") not in SCORED:
            rep.fail(f"{where}: no baseline or kept experiment {exp_id} was recorded before it")
            continue
        if exp_id in scored:
            rep.fail(f"{where}: experiment {exp_id} was already re-scored on the holdout; a record re-scores once")
        scored.add(exp_id)
        if rec.get("validation_metric") != target.get("metric"):
            rep.fail(f"{where}: its validation score {rec.get('validation_metric')} is not the experiment's {target.get('metric')}")
        values = rec.get("values") or []
        if rec.get("status") == "ok":
            mean = rec.get("metric")
            if not values or not isinstance(mean, (int, float)) or not math.isclose(mean, statistics.fmean(values), rel_tol=1e-12, abs_tol=1e-15):
                rep.fail(f"{where}: its score {mean} is not the mean of its values {values}")
        for run in rec.get("runs") or []:
            log = os.path.join(runs_dir, str(exp_id), f"holdout{suffix(int(run.get('repeat') or 0))}.log")
            digest = _sha256_or_none(log)
            if digest is not None and digest != run.get("log_sha256"):
                rep.fail(f"{where}: {os.path.basename(log)} does not match its recorded sha256")
        name = rec.get("metric_name", "metric")
        num = lambda v: f"{v:.6g}" if isinstance(v, (int, float)) else str(v)  # noqa: E731
        if rec.get("status") == "ok":
            reps = f" (mean of {len(values)} repeats)" if len(values) > 1 else ""
            rep.note(f"holdout: experiment {exp_id} ({target['status']}): {name} {num(target.get('metric'))} on validation, "
                     f"{num(rec.get('metric'))} on the holdout{reps}")
        else:
            rep.note(f"holdout: experiment {exp_id} ({target['status']}): not scored: {rec.get('reason', '')}")
    if n:
        for line in gain_lines(records):
            rep.note(line)


def _is_ancestor(root: Path, commit: str, head: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, head], cwd=root, capture_output=True).returncode == 0


def _check_git(ws: Workspace, records: list[dict[str, Any]], rep: VerifyReport) -> None:
    """Kept commits are on the run branch with their recorded trees and form one chain from the
    base commit (each keep's parent is the keep before it); the head is the last keep; and the branch
    holds no commit the record does not (an agent's own `git commit` in the worktree)."""
    header = records[0]
    exps = [r for r in records if r.get("kind") == "experiment"]
    branch = f"{BRANCH_PREFIX}{header['tag']}"
    head = git("rev-parse", "--verify", "-q", f"refs/heads/{branch}", cwd=ws.root, check=False).strip()
    if not head:
        rep.fail(f"the run branch {branch} does not exist")
        return
    base = str(header.get("base_commit") or "")
    kept = [r for r in exps if r["status"] == "keep"]
    expected_parent = base
    for rec in kept:
        where = f"experiment {rec['id']} (keep)"
        tree = git("rev-parse", "--verify", "-q", f"{rec['commit']}^{{tree}}", cwd=ws.root, check=False).strip()
        if rec.get("parent") != expected_parent:
            before = "the run's base commit" if expected_parent == base else "the previous kept commit"
            rep.fail(f"{where}: its parent {str(rec.get('parent'))[:12]} is not {before} {expected_parent[:12]}; "
                     "the kept commits do not form one chain (something moved the run branch between keeps)")
        if not tree:
            rep.fail(f"{where}: commit {rec['commit'][:12]} is not in the repository")
        elif tree != rec.get("tree"):
            rep.fail(f"{where}: commit {rec['commit'][:12]} has tree {tree[:12]}, the record says {str(rec.get('tree'))[:12]}")
        elif not _is_ancestor(ws.root, rec["commit"], head):
            rep.fail(f"{where}: commit {rec['commit'][:12]} is not on {branch}")
        elif hashlib.sha256(ws.diff(rec["parent"], rec["commit"]).encode()).hexdigest() != rec.get("diff_sha256"):
            rep.fail(f"{where}: the diff of commit {rec['commit'][:12]} against its parent is not the recorded diff")
        expected_parent = str(rec.get("commit"))
    expected = kept[-1]["commit"] if kept else base
    if head != expected:
        rep.fail(f"{branch} points at {head[:12]}, but the last kept record is {str(expected)[:12]}")
    on_branch = git("rev-list", f"{base}..{head}", cwd=ws.root, check=False).split() if base else []
    recorded = {r.get("commit") for r in kept}
    unrecorded = [c for c in on_branch if c not in recorded]
    if unrecorded:
        subject = git("log", "-1", "--format=%s", unrecorded[-1], cwd=ws.root, check=False).strip()
        rep.fail(f"{branch} holds {len(unrecorded)} commit(s) that no kept record names, the first {unrecorded[-1][:12]} "
                 f"({subject[:60]!r}); something committed on the run branch behind the harness's back")
    if rep.ok:
        rep.note(f"git: {branch} at {head[:12]} = the last kept record; {len(kept)} kept commits form one chain "
                 f"from {base[:12]} and carry their recorded trees and diffs; no other commits on the branch")


def _check_key(public_key: str | None, key: str | None, rep: VerifyReport, what: str) -> None:
    """Compare the record's key with one the verifier already trusts; without one, say plainly that
    the evidence is only consistent with itself (anyone can re-sign a copy with a fresh key)."""
    from .signing import fingerprint, trusted_key_ids

    try:
        actual = fingerprint(public_key or "")
    except ValueError:
        return  # no key: _check_records already failed
    if key is None:
        rep.note(f"WARNING: {what} is only self-consistent: it carries its own public key, so a copy re-signed with "
                 f"a fresh key passes too. Compare the key's fingerprint with the one the run printed, or pass "
                 f"--key: {actual}")
        return
    if actual in trusted_key_ids(key):
        rep.note(f"key: signed by the trusted key {actual[:16]}…")
    else:
        rep.fail(f"{what} is signed by key {actual[:16]}…, not by the key you trust ({key[:64]}); it was re-signed or is another run's")


def _check_timestamps(state: Path, hashes: list[str], ca: Path | None, rep: VerifyReport) -> None:
    from .timestamp import check_tokens

    result = check_tokens(state, hashes, ca)
    for problem in result.problems:
        rep.fail(problem)
    if result.checked and result.ok:
        who = "signed by the trusted TSA" if result.trusted else (
            "their signer NOT checked: set [evidence] timestamp_ca or pass --tsa-ca")
        rep.note(f"timestamps: {result.checked} tokens match the chain ({who}); latest {result.latest}")


def _tsa_ca(root: Path, tsa_ca: Path | None) -> Path | None:
    if tsa_ca is not None:
        return Path(tsa_ca)
    from .timestamp import load_evidence_config

    configured = load_evidence_config(root).timestamp_ca
    return (Path(root) / Path(configured).expanduser()) if configured else None


IN_PROCESS_PROPOSERS = ("tune", "llm", "hybrid", "baseline")  # they return text; they run no code of their own


def guarantee_of(rec: dict[str, Any]) -> str:
    """Which guarantees held for one experiment, as enforced (from its record): the sandbox of its
    runs and the promises it kept, and whether its proposer was confined."""
    runs = rec.get("runs") or []
    if runs:
        modes = sorted({r.get("sandbox", "?") for r in runs})
        broken = sorted({k for r in runs for k, held in (r.get("enforced") or {}).items() if not held})
        sandbox = f"sandbox {'/'.join(modes)}" + (f" (not enforced: {', '.join(broken)})" if broken else " (every promise held)")
    else:
        sandbox = "nothing ran"
    proposer = str(rec.get("proposer", ""))
    confined = (rec.get("proposal") or {}).get("confined")
    if proposer.split(":")[0] in IN_PROCESS_PROPOSERS:
        who = f"proposer {proposer or '?'} (runs no code)"
    elif confined is True:
        who = f"proposer {proposer} confined"
    elif confined is False:
        who = f"proposer {proposer} NOT confined"
    else:
        who = f"proposer {proposer} (confinement not recorded)"
    guards = [r["guard"] for r in runs if r.get("guard")]
    guard = ""
    if guards:
        guard = "; guard passed" if all(g.get("exit_code") == 0 for g in guards) else "; guard FAILED"
    return f"{sandbox}{guard}; {who}"


def _judged_early(rec: dict[str, Any]) -> str | None:
    """What stopped or refused an experiment short of the keep rule: a prune rule, a screening run,
    a constraint or the guard. None for the rest."""
    if rec.get("status") == "pruned":
        fired = rec.get("pruned") or {}
        return f"pruned by {fired.get('rule', '?')} on {fired.get('metric', '?')} at {fired.get('at', 0):.0%} of the run (its curve is recorded; it was never kept)"
    screen = rec.get("screen") or {}
    if screen and rec.get("status") != "baseline":
        value = screen.get("metric")
        shown = f"{value:.6g}" if isinstance(value, (int, float)) else "no score"
        return f"screened at {screen.get('budget_s', 0):g} s: {shown}, {'promoted to the full budget' if screen.get('promoted') else 'not promoted'}"
    if "constraint" in (rec.get("flags") or []) or (rec.get("status") == "rejected" and str(rec.get("reason", "")).startswith("guard ")):
        return str(rec.get("reason", ""))[:200]
    return None


def guarantees(exps: list[dict[str, Any]]) -> list[str]:
    """Per experiment, which guarantees held; consecutive experiments alike share one line."""
    lines: list[str] = []
    groups: list[tuple[str, int, int]] = []
    exps = sorted(exps, key=lambda r: r["id"])  # with workers they land in the order they finish
    for rec in exps:
        g = guarantee_of(rec)
        if groups and groups[-1][0] == g and groups[-1][2] == rec["id"] - 1:
            groups[-1] = (g, groups[-1][1], rec["id"])
        else:
            groups.append((g, rec["id"], rec["id"]))
    for g, first, last in groups:
        ids = f"experiment {first}" if first == last else f"experiments {first}-{last}"
        lines.append(f"guarantees: {ids}: {g}")
    for rec in exps:  # a declared cache carries state between experiments: show what each one found
        for k, run in enumerate(rec.get("runs") or []):
            for rel, before in ((run.get("cache_sha256") or {}).get("before") or {}).items():
                after = run["cache_sha256"].get("after", {}).get(rel)
                short = lambda h: h[:12] if h else "absent"  # noqa: E731
                lines.append(f"cache: experiment {rec['id']} repeat {k + 1}: {rel} {short(before)} -> {short(after)}")
    for rec in exps:
        early = _judged_early(rec)
        if early:
            lines.append(f"judged: experiment {rec['id']}: {early}")
    return lines


def verify_run(root: Path, *, key: str | None = None, tsa_ca: Path | None = None) -> VerifyReport:
    ws = Workspace(root)
    if not (ws.state / LEDGER_NAME).exists():
        raise UserError(f"{ws.state / LEDGER_NAME} not found; there is no run to verify in {ws.root}")
    rep = VerifyReport()
    records = _check_records(ws.state, rep, _tsa_ca(ws.root, tsa_ca))
    if records is not None:
        _check_git(ws, records, rep)
        for line in guarantees([r for r in records if r.get("kind") == "experiment"]):
            rep.note(line)
        if key is not None:
            _check_key(records[0].get("public_key"), key, rep, "the ledger")
        elif records[0].get("public_key"):
            rep.note(f"key: fingerprint {_fingerprint_or_key(records[0]['public_key'])} (pass --key to check it is the one you trust)")
    rep.note("OK: the record is intact" if rep.ok else "the record is NOT intact")
    return rep


# ---- evidence bundles -------------------------------------------------------------------------

def _bundle_members(state: Path) -> list[Path]:
    files = [state / LEDGER_NAME, state / RESULTS_NAME]
    stamps = state / TOKEN_DIR  # time-stamp tokens travel with the ledger they witness
    if stamps.is_dir():
        files += sorted(stamps.glob("*.tsr"), key=lambda p: (len(p.name), p.name))
    runs = state / "runs"
    if runs.is_dir():
        for run_dir in sorted(runs.iterdir(), key=lambda p: (len(p.name), p.name)):
            for f in sorted(run_dir.iterdir()):
                if f.is_file() and (f.suffix in (".patch", ".log", ".md", ".txt", ".json")):
                    files.append(f)
    return [f for f in files if f.exists()]


def export_bundle(root: Path, out: Path | None = None) -> Path:
    """Write ledger, results.tsv, patches, logs, prompts and replies (no artifacts) to a .tar.gz."""
    ws = Workspace(root)
    if not (ws.state / LEDGER_NAME).exists():
        raise UserError(f"{ws.state / LEDGER_NAME} not found; there is no run to export in {ws.root}")
    header = Ledger(ws.state).header() or {}
    out = Path(out) if out else ws.root / f"autoresearch-evidence-{header.get('tag', 'run')}.tar.gz"
    members = _bundle_members(ws.state)
    manifest = {"format": BUNDLE_FORMAT, "tag": header.get("tag"), "public_key": header.get("public_key"),
                "files": {str(f.relative_to(ws.state)): _sha256(f) for f in members}}
    with tarfile.open(out, "w:gz") as tar:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for f in members:
            tar.add(f, arcname=str(f.relative_to(ws.state)), recursive=False)
    return out


def verify_bundle(bundle: Path, *, key: str | None = None, tsa_ca: Path | None = None) -> VerifyReport:
    """Check a bundle from `export`. With `key` (a fingerprint or public key file), also check that
    the run was signed by that key; without it the bundle is only shown to agree with itself."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserError(f"{bundle} not found; pass the .tar.gz written by `autoresearch export`")
    rep = VerifyReport()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        try:
            with tarfile.open(bundle, "r:gz") as tar:
                tar.extractall(state, filter="data")  # refuses absolute paths, '..' and links out
        except (tarfile.TarError, OSError) as err:
            raise UserError(f"{bundle} is not a readable evidence bundle ({err}); export it again") from None
        try:
            manifest = json.loads((state / "MANIFEST.json").read_text())
        except (OSError, ValueError):
            rep.fail("the bundle has no readable MANIFEST.json")
            return rep
        if manifest.get("format") != BUNDLE_FORMAT:
            rep.fail(f"unknown bundle format {manifest.get('format')!r}")
            return rep
        for name, digest in manifest.get("files", {}).items():
            f = state / name
            if not f.is_file() or _sha256(f) != digest:
                rep.fail(f"{name} is missing or differs from the bundle's manifest")
        records = _check_records(state, rep, tsa_ca)
        if records is not None and manifest.get("public_key") != records[0].get("public_key"):
            rep.fail("the manifest's public key differs from the ledger's")
        if records is not None:
            _check_key(records[0].get("public_key"), key, rep, "this bundle")
    rep.note("(git was not checked: a bundle carries no repository)")
    if rep.ok and key is None:
        rep.note("OK: the evidence is intact (self-consistent only: pass --key FINGERPRINT to check who signed it)")
    else:
        rep.note("OK: the evidence is intact" if rep.ok else "the evidence is NOT intact")
    return rep


# ---- re-execution -----------------------------------------------------------------------------

@dataclass
class Rerun:
    exp_id: int
    recorded: float
    measured: float | None
    tolerance: float
    status: str

    @property
    def agrees(self) -> bool:
        return self.measured is not None and abs(self.measured - self.recorded) <= self.tolerance


def rerun(root: Path, *, best: int | None = None, ids: list[int] | None = None, progress=None) -> tuple[VerifyReport, list[Rerun]]:
    """Re-run kept commits on this machine and compare the metric with the recorded one.

    Agreement means within 3 x the run's measured noise (the baseline std); a deterministic
    experiment with zero noise must reproduce to 1e-9 relative."""
    from .loop import Session

    session = Session(root, progress=progress)
    ledger = session.ledger
    if not ledger.exists():
        raise UserError(f"{ledger.path} not found; there is no run to re-measure in {session.root}")
    exps = ledger.experiments()
    header = ledger.header() or {}
    session.tag = header.get("tag")
    maximize = header.get("goal") == "maximize"
    candidates = [r for r in exps if r["status"] in ADVANCES_BEST and r.get("metric") is not None]
    if ids:
        by_id = {r["id"]: r for r in exps}
        bad = [i for i in ids if i not in by_id or by_id[i] not in candidates]
        if bad:
            raise UserError(f"experiments {bad} are not kept (or baseline) records of {ledger.path}; pick ids from `autoresearch log --status keep`")
        chosen = [by_id[i] for i in ids]
    else:
        kept = [r for r in candidates if r["status"] == "keep"] or candidates
        chosen = sorted(kept, key=lambda r: r["metric"], reverse=maximize)[: best or 1]
    noise = session.noise() or 0.0
    rep = VerifyReport()
    results: list[Rerun] = []
    with session.locked():
        for rec in chosen:
            measured, status = session.remeasure(rec)
            tol = max(3 * noise, 1e-9 * abs(rec["metric"]))
            r = Rerun(rec["id"], rec["metric"], measured, tol, status)
            results.append(r)
            shown = f"{measured:.6g}" if measured is not None else status
            verdict = "agrees" if r.agrees else "DISAGREES"
            line = (f"experiment {rec['id']} ({rec['status']}): recorded {rec['metric']:.6g}, re-measured {shown} "
                    f"-> {verdict} (tolerance {tol:.3g} = 3 x noise)")
            if r.agrees:
                rep.note(line)
            else:
                rep.fail(line)
    rep.note("OK: every re-measured result agrees with its record" if rep.ok else "some results did NOT reproduce")
    return rep, results
