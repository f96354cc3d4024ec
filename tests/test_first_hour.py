"""The README's main command, pasted as written into a fresh clone of this project, as a new user does.

The default suite runs the part after the install (init + run) with the installed autoresearch; the
slow suite pastes the whole line, venv and pip install included. Both stop the endless run with
Ctrl-C once it shows progress, and demand that nothing printed a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT

FIRST_PROGRESS = re.compile(r"^(setup \||\[\s*\d+\] repeat)", re.M)


def readme_main_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run it", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def fresh_clone(dest: Path) -> Path:
    """What `git clone` of this checkout would give once the working tree is committed."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def paste(command: str, cwd: Path, env: dict[str, str], until: re.Pattern, limit_s: float) -> tuple[str, float | None, int]:
    """Run a pasted command line in bash; press Ctrl-C once `until` shows in its output. Returns the
    output, the seconds to that line (None if it never came) and the exit status."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    out: list[str] = []
    seen = threading.Event()
    started = time.monotonic()
    first: list[float] = []

    def read() -> None:
        for line in proc.stdout:
            out.append(line)
            if not seen.is_set() and until.search(line):
                first.append(time.monotonic() - started)
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen.wait(limit_s)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on a terminal does: the whole foreground group
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    reader.join(timeout=10)
    return "".join(out), (first[0] if first else None), code


def test_the_readme_main_command_is_the_one_this_test_pastes():
    command = readme_main_command()
    assert command.endswith("autoresearch init myexp --template nanogpt && autoresearch run myexp"), command


def test_init_and_run_from_the_readme_work_in_a_fresh_clone(tmp_path):
    clone = fresh_clone(tmp_path / "autoresearch")
    command = readme_main_command()
    after_install = command[command.index("autoresearch init"):]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out, first_s, code = paste(after_install, clone, env, FIRST_PROGRESS, limit_s=60)
    assert "Traceback" not in out, out
    assert first_s is not None, out
    assert "made myexp a git repository of its own" in out, out
    assert code == 0 and "stopped (interrupted)" in out, out
    # the project's own checkout is untouched: the experiment is a repository of its own
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=clone, capture_output=True,
                          text=True).stdout == ""
    assert (clone / "myexp/.git").is_dir()


def test_init_inside_a_repository_leaves_an_experiment_run_can_use(tmp_path):
    repo = tmp_path / "code"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", "autoresearch init sub/myexp && autoresearch run sub/myexp -n 0 -q && "
                           "autoresearch status sub/myexp"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "baseline" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh venv, pip install, the corpus download and the hardware measurement
def test_the_whole_readme_line_pasted_into_a_fresh_clone_reaches_the_baseline(tmp_path):
    clone = fresh_clone(tmp_path / "autoresearch")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    baseline_running = re.compile(r"^\[\s*0\] repeat 1/", re.M)
    out, first_s, code = paste(readme_main_command(), clone, env, baseline_running, limit_s=1500)
    assert "Traceback" not in out, out
    assert first_s is not None, out[-3000:]
    assert code == 0 and "stopped (interrupted)" in out, out[-3000:]


def test_the_first_result_estimate_never_reads_zero_while_the_evaluation_still_runs():
    from autoresearch.progress import Activity

    running = Activity("[0] repeat 1/3", "run", budget_s=300, eta_s=315)
    assert "first result in ~5m1" in running.text()
    late = Activity("[0] repeat 1/3", "evaluate", budget_s=None, eta_s=0.4)  # the run took its whole estimate
    assert "first result when evaluate ends" in late.text() and "~0s" not in late.text()


def test_each_repeat_of_a_long_baseline_prints_its_number_before_the_last_repeat_ends(tmp_path, monkeypatch):
    """The status line promised a first result at the first repeat's end; a 3-repeat nanogpt
    baseline printed nothing for ~17 minutes. Now each long repeat prints its number as it ends."""
    import io

    from rich.console import Console

    from autoresearch.loop import Session
    from autoresearch.progress import Progress
    from conftest import make_experiment

    root = make_experiment(tmp_path / "exp", baseline_runs=3)
    buf = io.StringIO()
    progress = Progress(console=Console(file=buf, force_terminal=False, width=200))
    monkeypatch.setattr(Progress, "PLAIN_FIRST_S", 0.0)  # this experiment takes well under the real 5 s
    s = Session(root, progress=progress)
    s.open()
    s.measure_baseline()
    lines = buf.getvalue().splitlines()
    repeats = [i for i, line in enumerate(lines) if re.match(r"\[0\] repeat \d/3: score \d", line)]
    assert len(repeats) == 3, lines
    verdict = next(i for i, line in enumerate(lines) if line.startswith("[   0] baseline"))
    assert repeats[-1] < verdict  # each number came as its repeat ended, before the baseline's verdict
    assert re.search(r"repeat 1/3: score 4(\.\d+)? \(run \d+s\)", lines[repeats[0]])


def test_quick_repeats_print_no_extra_line():
    import io

    from rich.console import Console

    from autoresearch.progress import Progress

    buf = io.StringIO()
    p = Progress(console=Console(file=buf, force_terminal=False))
    p.measured("[3] repeat 1/3", "val_bpb", 0.5, run_s=0.8, evaluate_s=0.1)
    assert buf.getvalue() == ""
    p.measured("[3] repeat 1/3", "val_bpb", None, run_s=301.0, evaluate_s=44.0)
    assert "[3] repeat 1/3: no val_bpb (run 5m01s, evaluate 44s)" in buf.getvalue()
