"""`autoresearch verify`: check that the record is intact and agrees with git and the files on disk."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .ledger import Ledger, LedgerError, verify_chain
from .workspace import BRANCH_PREFIX, Workspace, git


@dataclass
class VerifyReport:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if self.ok:  # the first problem is the one that names the bad record
            self.lines.append(f"FAIL {text}")
        else:
            self.lines.append(f"     also: {text}")
        self.ok = False


def _signature_checker():
    try:
        from .signing import verify_signature
    except ImportError:  # pragma: no cover - signing ships with the package
        return None
    return verify_signature


def verify_run(root: Path) -> VerifyReport:
    ws = Workspace(root)
    ledger = Ledger(ws.state)
    if not ledger.path.exists():
        raise UserError(f"{ledger.path} not found; there is no run to verify in {ws.root}")
    rep = VerifyReport()
    chain = verify_chain(ledger.path, _signature_checker())
    if not chain.ok:
        for problem in chain.problems:
            rep.fail(problem)
        return rep
    try:
        records = ledger.load()
    except LedgerError as err:
        rep.fail(str(err))
        return rep
    header = records[0]
    exps = [r for r in records if r.get("kind") == "experiment"]
    signed = bool(header.get("public_key"))
    rep.lines.append(f"chain: {chain.records} records linked{', every signature valid' if signed else ' (unsigned)'}")

    # Git: kept commits on the branch with their recorded trees; the head is the last keep.
    branch = f"{BRANCH_PREFIX}{header['tag']}"
    head = git("rev-parse", "--verify", "-q", f"refs/heads/{branch}", cwd=ws.root, check=False).strip()
    if not head:
        rep.fail(f"the run branch {branch} does not exist")
        return rep
    kept = [r for r in exps if r["status"] == "keep"]
    for rec in kept:
        where = f"experiment {rec['id']} (keep)"
        tree = git("rev-parse", "--verify", "-q", f"{rec['commit']}^{{tree}}", cwd=ws.root, check=False).strip()
        if not tree:
            rep.fail(f"{where}: commit {rec['commit'][:12]} is not in the repository")
            continue
        if tree != rec.get("tree"):
            rep.fail(f"{where}: commit {rec['commit'][:12]} has tree {tree[:12]}, the record says {str(rec.get('tree'))[:12]}")
        if not _is_ancestor(ws, rec["commit"], head):
            rep.fail(f"{where}: commit {rec['commit'][:12]} is not on {branch}")
    expected_head = kept[-1]["commit"] if kept else header.get("base_commit")
    if head != expected_head:
        rep.fail(f"{branch} points at {head[:12]}, but the last kept record is {str(expected_head)[:12]}")
    else:
        rep.lines.append(f"git: {branch} at {head[:12]} = last kept record; {len(kept)} kept commits with their trees")

    # Patches: every tried change survives with its recorded hash.
    missing = 0
    for rec in exps:
        if not rec.get("diff_sha256") or rec["status"] == "baseline":
            continue
        patch = ws.state / "runs" / str(rec["id"]) / "diff.patch"
        if not patch.exists():
            missing += 1
            rep.fail(f"experiment {rec['id']}: {patch} is missing")
            continue
        digest = hashlib.sha256(patch.read_bytes()).hexdigest()
        if digest != rec["diff_sha256"]:
            rep.fail(f"experiment {rec['id']}: diff.patch does not match its recorded sha256")
    if rep.ok:
        rep.lines.append(f"patches: {sum(1 for r in exps if r.get('diff_sha256') and r['status'] != 'baseline')} diffs match their hashes")

    # Protected files: the same bytes in every experiment.
    manifests = [(r["id"], r.get("protected")) for r in exps if r.get("protected")]
    if manifests:
        first_id, first = manifests[0]
        for exp_id, manifest in manifests[1:]:
            if manifest != first:
                changed = sorted(k for k in set(first) | set(manifest) if first.get(k) != manifest.get(k))
                rep.fail(f"experiment {exp_id}: protected files differ from experiment {first_id}: {', '.join(changed)}")
                break
        else:
            rep.lines.append(f"protected: {len(first)} files identical across {len(manifests)} experiments")

    if not ledger.results_agree():
        rep.fail(f"{ledger.results_path.name} does not agree with the ledger (edited by hand?)")
    else:
        rep.lines.append(f"results.tsv: {len(exps)} rows agree with the ledger")
    rep.lines.append("OK: the record is intact" if rep.ok else "the record is NOT intact")
    return rep


def _is_ancestor(ws: Workspace, commit: str, head: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, head], cwd=ws.root, capture_output=True).returncode == 0
