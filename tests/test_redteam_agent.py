"""Red team: a hostile stand-in agent attacks the harness, and every attack must fail.

The same script runs as the `agent` proposer's command (`run_loop`, the harness is this test
process) and as the agent of `autoresearch drive` (the harness is a CLI subprocess). It prints one
`RESULT {...}` line per attempt, which the tests read from the agent's log; they then check the
host's side (key, ledger, files, processes, the record) themselves, never trusting the agent.
Each test needs bubblewrap: without it the agent is not confined (and the record says so).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest

from autoresearch import sandbox
from conftest import cli, git, make_experiment

pytestmark = pytest.mark.skipif(
    not sandbox.bwrap_available(),
    reason=f"bubblewrap does not work here ({sandbox._bwrap_probe().reason}), so the agent is not confined "
           "and these attacks would succeed; install it: apt-get install -y bubblewrap",
)
VIA = ["proposer", "drive"]

HOSTILE = r'''
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
mode, root = sys.argv[1], Path(os.environ["HOSTILE_ROOT"])
state = root / ".autoresearch"
def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
def attempt(name, fn):
    try:
        result(name=name, ok=True, got=str(fn())[:2000])
    except Exception as e:
        result(name=name, ok=False, error=f"{type(e).__name__}: {e}")
def read_tree(folder):
    found = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            found[os.path.join(dirpath, f)] = Path(dirpath, f).read_bytes().hex()
    if not found and not Path(folder).exists():
        raise FileNotFoundError(folder)
    return found
if mode == "key":
    attempt("key_dir", lambda: read_tree(os.environ["AUTORESEARCH_KEY_DIR"]))
    attempt("default_key_dir", lambda: read_tree(Path.home() / ".config/autoresearch/keys"))
    attempt("git_config", lambda: subprocess.run(["git", "config", "--list"], capture_output=True, text=True).stdout)
    attempt("home", lambda: sorted(os.listdir(Path.home())))
elif mode == "ledger":
    attempt("read", lambda: (state / "ledger.jsonl").read_text())
    attempt("results", lambda: (state / "results.tsv").read_text())
    attempt("runs", lambda: os.listdir(state / "runs"))
    attempt("baseline_log", lambda: (state / "runs/0/run.log").read_text())
elif mode == "append":
    line = json.dumps({"kind": "experiment", "id": 99, "status": "keep", "description": "FORGED", "sig": "00"})
    def append():
        with open(state / "ledger.jsonl", "a") as f:
            f.write(line + "\n")
        return "appended"
    attempt("append", append)
elif mode == "hidden":
    attempt("worktree_copy", lambda: Path("val_split.txt").read_text())
    attempt("user_copy", lambda: (root / "val_split.txt").read_text())
    attempt("git_object", lambda: subprocess.run(["git", "show", "HEAD:val_split.txt"], capture_output=True, text=True, check=True).stdout)
elif mode == "write":
    def write(p, text):
        Path(p).write_text(text)
        return "written"
    attempt("user_train", lambda: write(root / "train.py", "X = 1.0  # FORGED\n"))
    attempt("user_new", lambda: write(root / "evil.txt", "FORGED\n"))
    attempt("protected", lambda: write("prepare.py", "FORGED = True\n"))
    attempt("config", lambda: write("autoresearch.toml", "FORGED\n"))
    attempt("git_hook", lambda: write(Path(subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()) / "hooks/post-commit", "FORGED"))
    attempt("commit", lambda: subprocess.run(["git", "commit", "-qam", "FORGED"], capture_output=True, text=True, check=True).stdout)
elif mode == "daemon":
    marker = os.environ["HOSTILE_MARKER"]
    # two ways to outlive the agent: a new session (setsid nohup), and a double fork
    subprocess.Popen(["setsid", "nohup", "sh", "-c", f"sleep 600; : {marker}"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sh", ["sh", "-c", f"while :; do sleep 1; : {marker}; done"])
        os._exit(0)
    time.sleep(0.5)
    result(name="daemon", ok=True, got="started")
elif mode == "tcp":
    def connect():
        with socket.create_connection(("127.0.0.1", int(os.environ["HOSTILE_PORT"])), timeout=3) as s:
            s.sendall(b"FORGED\n")
        return "connected"
    attempt("loopback", connect)
elif mode == "tcp_pair":
    def talk(port):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"PING\n")
            return s.recv(100).decode()
    attempt("allowed", lambda: talk(int(os.environ["HOSTILE_PORT"])))
    attempt("other", lambda: talk(int(os.environ["HOSTILE_PORT2"])))
elif mode == "kill":
    def ancestors():  # up the parent chain, as far as this process can see
        out, pid = [], os.getppid()
        while pid > 1:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append((pid, cmd))
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return out
    attempt("ancestors", ancestors)
    for pid, cmd in ancestors():
        if "autoresearch.cli drive" in cmd:
            attempt("sigterm_drive", lambda: os.kill(pid, signal.SIGTERM))
    pid = int(os.environ["HOSTILE_HARNESS_PID"])
    attempt("visible", lambda: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    attempt("sigterm", lambda: os.kill(pid, signal.SIGTERM))
    attempt("procs", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
elif mode == "config":
    attempt("config", lambda: Path("autoresearch.toml").write_text(Path("autoresearch.toml").read_text().replace('evaluate = "python evaluate.py"', 'evaluate = ""')))
    attempt("user_config", lambda: (root / "autoresearch.toml").write_text("FORGED"))
# then an ordinary edit, so each attack also goes through a real experiment
train = Path("train.py")
# and prints a score of its own last (it counts only where no protected `evaluate` scores the run)
train.write_text(train.read_text().replace("X = 3.0", "X = 1.5") + 'print("score: -1000")\n')
if os.environ.get("AUTORESEARCH_SOCKET"):
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", "try", "-m", "lower X"], capture_output=True, text=True)
    result(name="try", ok=p.returncode == 0, got=p.stdout + p.stderr)
print("DESCRIPTION: lower X")
'''

# With a protected scorer: train.py leaves its X in the artifacts, evaluate.py scores it.
TRAIN_FOR_EVALUATE = '''\
import os
X = 3.0
open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "x.txt"), "w").write(repr(X))
print(f"score: {(X - 1.0) ** 2}")
'''
EVALUATE = '''\
import os
x = float(open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "x.txt")).read())
print(f"score: {(x - 1.0) ** 2}")
'''


def setup(tmp_path: Path, *, network: bool = True, hidden: bool = False, evaluate: bool = False) -> tuple[Path, Path]:
    files = {"prepare.py": "DATA = 'train'\n"}
    if hidden:
        files["val_split.txt"] = "SECRET-VALIDATION-ROWS\n"
    if evaluate:
        files["evaluate.py"] = EVALUATE
    exp = make_experiment(tmp_path / "exp", baseline_runs=1, files=files, protected=["prepare.py"] + (["evaluate.py"] if evaluate else []),
                          evaluate="python evaluate.py" if evaluate else "", train=TRAIN_FOR_EVALUATE if evaluate else None)
    agents = tmp_path / "agentbin"
    agents.mkdir()
    (agents / "hostile.py").write_text(HOSTILE)
    toml = (exp / "autoresearch.toml").read_text()
    if hidden:
        toml = toml.replace("[metric]", 'hidden = ["val_split.txt"]\n\n[metric]')
    toml += (f'\n[proposer]\nkind = "agent"\nagent_timeout = "60s"\nnetwork = {str(network).lower()}\n'
             f'agent_paths = ["{agents}"]\ncommand = "{sys.executable} {agents / "hostile.py"} MODE"\n')
    (exp / "autoresearch.toml").write_text(toml)
    git(exp, "add", "-A")
    git(exp, "commit", "-qm", "hostile agent")
    return exp, agents / "hostile.py"


def attack(exp: Path, script: Path, mode: str, via: str, monkeypatch, **env: str) -> dict[str, dict]:
    """Run the hostile agent once; return its RESULT lines by name."""
    monkeypatch.setenv("HOSTILE_ROOT", str(exp))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    toml = exp / "autoresearch.toml"
    toml.write_text(toml.read_text().replace(" MODE\"", f" {mode}\""))
    git(exp, "commit", "-qam", f"mode {mode}")
    if via == "proposer":
        from autoresearch.loop import run_loop
        from autoresearch.progress import Progress

        run_loop(exp, max_experiments=1, progress=Progress(quiet=True))
        out = (exp / ".autoresearch/runs/1/agent.stdout").read_text()
    else:
        res = cli("drive", exp, "--", sys.executable, script, mode, env={"HOSTILE_HARNESS_PID": env.get("HOSTILE_HARNESS_PID", "1")})
        assert res.returncode == 0, res.stderr
        out = sorted((exp / ".autoresearch/drive").glob("agent-*.log"))[-1].read_text()
    found = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            found[r["name"]] = r
    assert found, out
    return found


def experiments(exp: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (exp / ".autoresearch/ledger.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "experiment"]


def assert_recorded_confined(exp: Path) -> None:
    last = experiments(exp)[-1]
    assert last["id"] == 1 and last["proposal"]["confined"] is True and last["proposal"]["sandbox"] == "bwrap"
    assert cli("verify", exp).returncode == 0


@pytest.mark.parametrize("via", VIA)
def test_the_agent_cannot_read_the_signing_key_or_a_credential_in_git_config(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path)
    git(exp, "config", "remote.origin.url", "https://user:ghp_HOSTILE_TOKEN@example.com/repo.git")
    got = attack(exp, script, "key", via, monkeypatch)
    assert "ghp_HOSTILE_TOKEN" not in json.dumps(got) and "core.bare=false" in got["git_config"]["got"]
    keys = list(Path(os.environ["AUTORESEARCH_KEY_DIR"]).iterdir())
    assert keys  # the run's private key is there, on the host
    for r in got.values():
        for key in keys:
            assert key.read_bytes().hex() not in json.dumps(r)
    assert got["key_dir"]["got"] in ("{}",) or not got["key_dir"]["ok"]
    assert_recorded_confined(exp)


@pytest.mark.parametrize("via", VIA)
def test_the_agent_cannot_read_the_ledger_or_the_runs(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path)
    got = attack(exp, script, "ledger", via, monkeypatch)
    assert not got["read"]["ok"] and not got["results"]["ok"]
    # runs/: at most its own scratch folder (the proposer's runs/1/agent), never other experiments' logs
    assert not got["runs"]["ok"] or got["runs"]["got"] in ("[]", "['1']")
    assert not got["baseline_log"]["ok"]
    assert_recorded_confined(exp)


@pytest.mark.parametrize("via", VIA)
def test_the_agent_cannot_append_to_the_ledger(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path)
    got = attack(exp, script, "append", via, monkeypatch)
    assert "append" in got  # it tried; whatever it wrote went nowhere the harness reads
    assert "FORGED" not in (exp / ".autoresearch/ledger.jsonl").read_text()
    assert [r["id"] for r in experiments(exp)] == [0, 1]
    assert_recorded_confined(exp)


@pytest.mark.parametrize("via", VIA)
def test_the_agent_cannot_read_a_hidden_file(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path, hidden=True)
    got = attack(exp, script, "hidden", via, monkeypatch)
    for name in ("worktree_copy", "user_copy", "git_object"):
        assert "SECRET-VALIDATION-ROWS" not in got[name].get("got", ""), name
    assert_recorded_confined(exp)


@pytest.mark.parametrize("via", VIA)
def test_the_agent_cannot_write_outside_its_editable_files(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path)
    before = {p: (exp / p).read_text() for p in ("train.py", "prepare.py")}
    got = attack(exp, script, "write", via, monkeypatch)
    for name in ("protected", "config", "git_hook", "commit"):
        assert not got[name]["ok"], (name, got[name])
    # the user's checkout: untouched (a write into the hidden checkout lands in a throw-away tmpfs)
    assert {p: (exp / p).read_text() for p in before} == before and not (exp / "evil.txt").exists()
    assert "FORGED" not in (exp / "autoresearch.toml").read_text()
    wt = exp / ".autoresearch/worktree"
    assert (wt / "prepare.py").read_text() == before["prepare.py"]
    assert not any(h.read_text() == "FORGED" for h in (exp / ".git/hooks").iterdir() if h.is_file())
    tag = json.loads((exp / ".autoresearch/ledger.jsonl").read_text().splitlines()[0])["tag"]
    branch_head = git(exp, "rev-parse", f"autoresearch/{tag}").strip()
    last = experiments(exp)[-1]
    assert branch_head == (last["commit"] if last["status"] == "keep" else last["parent"])  # only a keep moved it
    assert "FORGED" not in git(exp, "log", "--all", "--format=%s")
    assert_recorded_confined(exp)


@pytest.mark.parametrize("via", VIA)
def test_no_process_the_agent_starts_outlives_it(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path)
    marker = f"hostile-{uuid.uuid4().hex}"
    got = attack(exp, script, "daemon", via, monkeypatch, HOSTILE_MARKER=marker)
    assert got["daemon"]["ok"]  # both daemons were started inside
    survivors = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                survivors.append(int(entry))
        except OSError:
            continue
    for pid in survivors:  # never leave them to other tests
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
    assert_recorded_confined(exp)


@pytest.mark.parametrize("via", VIA)
def test_with_network_off_the_agent_cannot_reach_the_hosts_loopback(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path, network=False)
    port, accepted, close = _echo_server()
    try:
        got = attack(exp, script, "tcp", via, monkeypatch, HOSTILE_PORT=str(port))
    finally:
        close()
    assert not got["loopback"]["ok"] and accepted == []
    assert experiments(exp)[-1]["proposal"]["confined"] is True
    if via == "drive":  # the harness's own socket still works with the network off
        assert got["try"]["ok"], got["try"]


@pytest.mark.parametrize("via", VIA)
def test_the_agent_cannot_see_or_signal_the_harness(tmp_path, monkeypatch, via):
    exp, script = setup(tmp_path)
    harness = os.getpid()  # drive: the CLI's pid is unknown to the agent; it gets pytest's, an ancestor
    got = attack(exp, script, "kill", via, monkeypatch, HOSTILE_HARNESS_PID=str(harness))
    # its own pid namespace: the harness's pid is not there, or names one of the agent's own processes
    assert "pytest" not in got["visible"].get("got", "") and "autoresearch" not in got["visible"].get("got", "")
    assert not got["sigterm"]["ok"] or harness not in json.loads(got["procs"]["got"])
    assert max(json.loads(got["procs"]["got"])) < 1000  # only its own few processes
    seen = ast.literal_eval(got["ancestors"]["got"])  # [(pid, cmdline)]: its shell, nothing above
    assert seen and not any("autoresearch.cli drive" in cmd or "-m pytest" in cmd for _, cmd in seen)
    assert "sigterm_drive" not in got
    assert_recorded_confined(exp)


def test_editing_the_config_in_the_worktree_before_try_counts_for_nothing(tmp_path, monkeypatch):
    exp, script = setup(tmp_path, evaluate=True)
    config = (exp / "autoresearch.toml").read_text()
    got = attack(exp, script, "config", "drive", monkeypatch)
    assert not got["config"]["ok"] and "user_config" in got  # the latter wrote into a throw-away tmpfs
    assert (exp / ".autoresearch/worktree/autoresearch.toml").read_text() == config.replace(" MODE\"", " config\"")
    assert (exp / "autoresearch.toml").read_text() == config.replace(" MODE\"", " config\"")
    rec = experiments(exp)[-1]
    # the printed "score: -1000" of the edited train.py never counts: the protected scorer does
    assert rec["evaluate"] == "python evaluate.py" and rec["metric"] == pytest.approx(0.25)
    assert rec["proposal"]["confined"] is True and got["try"]["ok"]


def _echo_server():
    """A server on the host's loopback that records what each connection sends and answers PONG;
    returns (port, what it accepted, stop)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    accepted: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                data = conn.recv(100)
                accepted.append(data)
                if data:
                    conn.sendall(b"PONG")

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join(timeout=5)
        server.close()

    return server.getsockname()[1], accepted, close


@pytest.mark.parametrize("via", VIA)
def test_with_network_off_only_the_listed_loopback_ports_of_the_host_stay_reachable(tmp_path, monkeypatch, via):
    allowed, _, close_allowed = _echo_server()
    other, _, close_other = _echo_server()
    try:
        exp, script = setup(tmp_path, network=False)
        toml = exp / "autoresearch.toml"
        toml.write_text(toml.read_text().replace("network = false\n", f"network = false\nloopback_ports = [{allowed}]\n"))
        git(exp, "commit", "-qam", "a local model server on the host's loopback")
        got = attack(exp, script, "tcp_pair", via, monkeypatch, HOSTILE_PORT=str(allowed), HOSTILE_PORT2=str(other))
    finally:
        close_allowed()
        close_other()
    assert got["allowed"]["ok"] and got["allowed"]["got"] == "PONG", got
    assert not got["other"]["ok"], got
    assert experiments(exp)[-1]["proposal"]["confined"] is True
