"""Agent-driven mode: a coding agent edits the run's checkout and calls `autoresearch try`; the
harness commits its change, runs, judges, records, and keeps or resets. The agent never reports a
number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ProposalInvalid, UserError
from .loop import Session
from .progress import Progress
from .workspace import BRANCH_PREFIX, git, matches


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
