"""The sandbox's promises, each proved from inside a real run (autoresearch.sandbox).

Every test starts the command the way the runner does: `prepare()`, then
`Popen(argv, env, preexec_fn, start_new_session=True, cwd=workdir)`, and in a `finally` kills the
process group and calls `cleanup()`. Snippets are small Python programs run by the test's own
interpreter; they print JSON, and the test judges it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from autoresearch import sandbox
from autoresearch.errors import UserError
from autoresearch.sandbox import Limits, SandboxSpec, prepare, strip_secrets

REPO = Path(__file__).resolve().parents[1]
HAVE_BWRAP = sandbox.bwrap_available()
needs_bwrap = pytest.mark.skipif(
    not HAVE_BWRAP,
    reason=f"bubblewrap does not work here ({sandbox._bwrap_probe().reason}); install it: apt-get install -y bubblewrap",
)
CONFINED = ["process", pytest.param("bwrap", marks=needs_bwrap)]


def start(spec: SandboxSpec, code: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, sandbox.Prepared]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    env["SNIPPET"] = textwrap.dedent(code)
    command = f'"{sys.executable}" -I -c "$SNIPPET"'
    prepared = prepare(spec, command, env)
    proc = subprocess.Popen(
        prepared.argv,
        env=prepared.env,
        preexec_fn=prepared.preexec_fn,
        start_new_session=True,
        cwd=spec.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, prepared


def stop(proc: subprocess.Popen, prepared: sandbox.Prepared) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    prepared.cleanup()


def run(spec: SandboxSpec, code: str, env: dict[str, str] | None = None, timeout: float = 60) -> dict:
    proc, prepared = start(spec, code, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop(proc, prepared)
    assert proc.returncode == 0, f"snippet failed ({proc.returncode}):\n{err}\n{out}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def wt(tmp_path: Path) -> Path:
    w = tmp_path / "wt"
    w.mkdir()
    (w / "train.py").write_text("print('hi')\n")
    return w


def marker_pids(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            found.append(int(entry))
    return found


def kill_marked(marker: str) -> None:
    for pid in marker_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# --- modes and the environment -------------------------------------------------------------------


def test_unknown_mode_is_refused(wt):
    with pytest.raises(ValueError, match="unknown sandbox mode"):
        prepare(SandboxSpec(mode="docker", workdir=wt), "true", {})


def test_none_changes_nothing(wt):
    env = {"OPENAI_API_KEY": "sk-x", "PATH": "/usr/bin:/bin"}
    p = prepare(SandboxSpec(mode="none", workdir=wt), "echo hi", env)
    assert p.argv == ["/bin/sh", "-c", "echo hi"]
    assert p.env == env and p.preexec_fn is None and p.mode == "none" and p.warning is None
    assert not any(p.enforced.values())


def test_strip_secrets_patterns():
    env = {
        "OPENAI_API_KEY": "1", "ANTHROPIC_API_KEY": "1", "GITHUB_TOKEN": "1", "HF_TOKEN": "1",
        "AWS_SECRET_ACCESS_KEY": "1", "AWS_PROFILE": "1", "DB_PASSWORD": "1", "client_secret": "1",
        "SSH_AUTH_SOCK": "1", "GOOGLE_APPLICATION_CREDENTIALS": "1", "WANDB_API_KEY": "1",
        "DATABASE_URL": "1", "MY_THING": "1", "OTHER_x": "1",
        # kept: ordinary knobs that merely look a bit like secrets
        "PATH": "1", "HOME": "1", "TOKENIZERS_PARALLELISM": "1", "AUTORESEARCH_BUDGET_S": "1",
        "CUDA_VISIBLE_DEVICES": "1", "PYTHONHASHSEED": "1", "KEYBOARD": "1",
    }
    kept, removed = strip_secrets(env, ["MY_THING", "OTHER_*"])
    assert set(kept) == {
        "PATH", "HOME", "TOKENIZERS_PARALLELISM", "AUTORESEARCH_BUDGET_S", "CUDA_VISIBLE_DEVICES",
        "PYTHONHASHSEED", "KEYBOARD",
    }
    assert removed == sorted(set(env) - set(kept))


@pytest.mark.parametrize("mode", CONFINED)
def test_secrets_not_in_the_run_environment(wt, mode):
    env = {
        "OPENAI_API_KEY": "sk-live-123", "GITHUB_TOKEN": "ghp_x", "AWS_SECRET_ACCESS_KEY": "a",
        "MY_PASSWORD": "p", "LAB_LICENSE": "l", "TOKENIZERS_PARALLELISM": "false",
        "AUTORESEARCH_SEED": "7",
    }
    spec = SandboxSpec(mode=mode, workdir=wt, secrets=["LAB_LICENSE"])
    got = run(spec, "import os, json; print(json.dumps(dict(os.environ)))", env)
    for name in ("OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_PASSWORD", "LAB_LICENSE"):
        assert name not in got
    assert "sk-live-123" not in json.dumps(got)
    assert got["TOKENIZERS_PARALLELISM"] == "false" and got["AUTORESEARCH_SEED"] == "7"


def test_auto_uses_bwrap_where_it_works(wt):
    p = prepare(SandboxSpec(mode="auto", workdir=wt), "true", {})
    p.cleanup()
    if HAVE_BWRAP:
        assert p.mode == "bwrap" and p.argv[0].endswith("bwrap") and p.enforced["no_network"]
    else:
        assert p.mode == "process" and "bubblewrap" in p.warning


def test_auto_falls_back_to_process_with_a_warning(wt, monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_probe", lambda: sandbox._Probe(False, "the bwrap command is not installed"))
    p = prepare(SandboxSpec(mode="auto", workdir=wt), "true", {"GH_TOKEN": "x"})
    assert p.mode == "process"
    assert p.argv == ["/bin/sh", "-c", "true"]
    assert "not installed" in p.warning and "network" in p.warning and "apt-get install bubblewrap" in p.warning
    assert p.env == {} and p.stripped == ["GH_TOKEN"]
    assert p.enforced == {"env_stripped": True, "rlimits": True, "nproc_cap": False, "no_network": False,
                          "readonly_fs": False, "hidden": False, "pid_namespace": False}


def test_explicit_bwrap_without_bwrap_is_a_user_error(wt, monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_probe", lambda: sandbox._Probe(False, "the bwrap command is not installed"))
    with pytest.raises(UserError, match=r"autoresearch.toml.*apt-get install bubblewrap.*\"auto\""):
        prepare(SandboxSpec(mode="bwrap", workdir=wt), "true", {})


# --- resource limits -------------------------------------------------------------------------------

LIMITS_SNIPPET = """
import json, resource, os
out = {name: resource.getrlimit(getattr(resource, name))
       for name in ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CPU", "RLIMIT_CORE")}
try:
    with open("big.bin", "wb") as f:
        f.write(b"x" * (3 << 20))
    out["big_write"] = "ok"
except OSError as e:
    out["big_write"] = e.errno
try:
    block = bytearray(1 << 30)
    out["alloc_1g"] = "ok"
except MemoryError:
    out["alloc_1g"] = "MemoryError"
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", CONFINED)
def test_rlimits_hold_inside_the_run(wt, mode):
    limits = Limits(address_space=768 << 20, fsize=2 << 20, cpu_seconds=120)
    got = run(SandboxSpec(mode=mode, workdir=wt, limits=limits), LIMITS_SNIPPET)
    assert got["RLIMIT_AS"] == [768 << 20, 768 << 20]
    assert got["RLIMIT_FSIZE"] == [2 << 20, 2 << 20]
    assert got["RLIMIT_CPU"] == [120, 125]
    assert got["RLIMIT_CORE"] == [0, 0]
    assert got["big_write"] == 27  # EFBIG: the file stopped at the size limit
    assert (wt / "big.bin").stat().st_size == 2 << 20
    assert got["alloc_1g"] == "MemoryError"


FORK_BOMB = """
import json, os, signal
# Bounded on purpose: at most 1000 children, each blocked on a pipe that closes when we exit,
# and each with an alarm, so even a broken sandbox cannot hurt the machine.
r, w = os.pipe()
ok = failed = 0
for _ in range(1000):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        os.close(w)
        signal.alarm(30)
        os.read(r, 1)
        os._exit(0)
    ok += 1
print(json.dumps({"forked": ok, "refused": failed}))
"""


@pytest.mark.parametrize("mode", CONFINED)
def test_fork_bomb_is_contained(wt, mode):
    spec = SandboxSpec(mode=mode, workdir=wt, limits=Limits(nproc=32))
    probe = prepare(spec, "true", {})
    probe.cleanup()
    if not probe.enforced["nproc_cap"]:
        pytest.skip(f"the process cap does not hold here: {probe.warning}")
    got = run(spec, FORK_BOMB)
    assert got["forked"] < 40, got  # 32 allowed, minus the ones the snippet itself and its shell use
    assert got["refused"] > 900, got


def test_process_cap_defaults_fit_real_work():
    lim = Limits.default()
    assert lim.nproc >= 4096 and lim.address_space is None and lim.fsize >= 1 << 30


# --- bubblewrap: network --------------------------------------------------------------------------

NET_SNIPPET = """
import json, os, socket
targets = {"loopback": ("127.0.0.1", int(os.environ["PORT"]))}
if os.environ.get("OUTSIDE"):
    targets.update(outside=("10.255.255.1", 80), dns=("1.1.1.1", 53))
out = {}
for name, addr in targets.items():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(addr)
        out[name] = "connected"
    except OSError as e:
        out[name] = type(e).__name__ + ":" + str(e.errno)
    finally:
        s.close()
out["interfaces"] = [n for _, n in socket.if_nameindex()]
print(json.dumps(out))
"""


@needs_bwrap
def test_no_network_under_bwrap(wt):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        got = run(SandboxSpec(mode="bwrap", workdir=wt), NET_SNIPPET, {"PORT": str(port), "OUTSIDE": "1"})
        assert got["loopback"].startswith("ConnectionRefusedError"), got
        assert got["outside"] != "connected" and got["dns"] != "connected", got
        assert got["interfaces"] == ["lo"], got
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from the sandbox ever arrived
        # Control: the same snippet without bwrap reaches the listener, so the check above can fail.
        assert run(SandboxSpec(mode="process", workdir=wt), NET_SNIPPET, {"PORT": str(port)})["loopback"] == "connected"
    finally:
        listener.close()


@needs_bwrap
def test_network_can_be_allowed(wt):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        spec = SandboxSpec(mode="bwrap", workdir=wt, network=True)
        got = run(spec, NET_SNIPPET, {"PORT": str(listener.getsockname()[1])})
        assert got["loopback"] == "connected"
    finally:
        listener.close()


@needs_bwrap
def test_host_unix_sockets_out_of_reach(wt):
    """Read-only mounts do not stop connect() on a unix socket, so /run and /tmp are replaced."""
    d = Path("/run") / f"autoresearch-test-{uuid.uuid4().hex[:8]}"
    try:
        d.mkdir()
    except OSError:
        pytest.skip("cannot create a folder under /run here")
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(str(d / "s.sock"))
        srv.listen(1)
        code = f"""
        import json, socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(d / 's.sock')!r}); r = "connected"
        except OSError as e:
            r = type(e).__name__
        print(json.dumps({{"run": r}}))
        """
        assert run(SandboxSpec(mode="bwrap", workdir=wt), code)["run"] == "FileNotFoundError"
    finally:
        srv.close()
        (d / "s.sock").unlink(missing_ok=True)
        d.rmdir()


# --- bubblewrap: files ----------------------------------------------------------------------------

FILES_SNIPPET = """
import json, os, sys
checks = json.loads(os.environ["CHECKS"])
out = {}
def attempt(fn):
    try:
        r = fn()
        return "ok" if r is None else r
    except OSError as e:
        return "errno:" + str(e.errno)
def create_and_remove(p):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(p)
def open_for_write(p):
    os.close(os.open(p, os.O_WRONLY))  # opens, never writes: a failed sandbox changes nothing
def read(p):
    with open(p, "rb") as f:
        return "read:" + f.read().decode(errors="replace")
def listdir(p):
    return "list:" + ",".join(sorted(os.listdir(p)))
for name, (op, path) in checks.items():
    out[name] = attempt(lambda: {"create": create_and_remove, "write": open_for_write, "read": read,
                                 "list": listdir, "rename": lambda p: os.rename(p, p + ".moved"),
                                 "unlink": os.unlink}[op](path))
print(json.dumps(out))
"""


@pytest.fixture
def outside_tmp():
    """A scratch folder outside /tmp: under bwrap /tmp is fresh, so a file there is unseen anyway
    and could not show that a mask works."""
    base = Path("/var/tmp")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        pytest.skip("/var/tmp is not writable here")
    d = Path(tempfile.mkdtemp(prefix="autoresearch-test-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def layout(outside_tmp, monkeypatch):
    """A worktree inside a hidden state folder, as the runner will lay it out, with every kind of path."""
    tmp_path = outside_tmp
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("SSH-PRIVATE")
    monkeypatch.setenv("HOME", str(home))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "train.py").write_text("TRAIN")
    (exp / "prepare.py").write_text("PROTECTED")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=exp, check=True)
    subprocess.run([*git, "add", "train.py", "prepare.py"], cwd=exp, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=exp, check=True)
    state = exp / ".autoresearch"
    wt = state / "worktrees" / "e1"
    subprocess.run([*git, "worktree", "add", "-q", "-b", "autoresearch/e1", str(wt)], cwd=exp, check=True)
    (wt / "data").mkdir(parents=True)
    (wt / "data" / "val.bin").write_text("VALIDATION-SPLIT")
    (wt / "holdout").mkdir()
    (wt / "holdout" / "test.bin").write_text("HOLDOUT")
    (state / "ledger.jsonl").write_text("LEDGER")
    artifacts = state / "runs" / "1" / "artifacts"
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "tag.key").write_text("PRIVATE-KEY")
    spec = SandboxSpec(
        mode="bwrap",
        workdir=wt,
        writable=[artifacts],
        readonly=[wt / "prepare.py"],
        hidden=[keys, state, wt / "data" / "val.bin", wt / "holdout"],
    )
    return spec, {"wt": wt, "state": state, "artifacts": artifacts, "keys": keys, "home": home}


@needs_bwrap
def test_files_under_bwrap(layout):
    spec, p = layout
    wt = p["wt"]
    checks = {
        "edit_worktree": ("write", str(wt / "train.py")),
        "new_in_worktree": ("create", str(wt / "new.py")),
        "new_in_artifacts": ("create", str(p["artifacts"] / "m.json")),
        "new_in_tmp": ("create", "/tmp/scratch"),
        "write_protected": ("write", str(wt / "prepare.py")),
        "rename_protected": ("rename", str(wt / "prepare.py")),
        "unlink_protected": ("unlink", str(wt / "prepare.py")),
        "read_protected": ("read", str(wt / "prepare.py")),
        "write_repo": ("write", str(REPO / "pyproject.toml")),
        "create_in_root": ("create", f"/autoresearch-probe-{uuid.uuid4().hex[:8]}"),
        "create_in_home": ("create", str(p["home"] / "probe")),
        "read_key": ("read", str(p["keys"] / "tag.key")),
        "list_keys": ("list", str(p["keys"])),
        "read_ledger": ("read", str(p["state"] / "ledger.jsonl")),
        "read_val": ("read", str(wt / "data" / "val.bin")),
        "list_holdout": ("list", str(wt / "holdout")),
        "read_holdout": ("read", str(wt / "holdout" / "test.bin")),
        "read_ssh": ("read", str(p["home"] / ".ssh" / "id_ed25519")),
        "unlink_dotgit": ("unlink", str(wt / ".git")),
        "write_dotgit": ("write", str(wt / ".git")),
    }
    got = run(spec, FILES_SNIPPET, {"CHECKS": json.dumps(checks)})
    assert got["edit_worktree"] == "ok"
    assert got["new_in_worktree"] == "ok"
    assert got["new_in_artifacts"] == "ok"
    assert got["new_in_tmp"] == "ok"
    assert got["read_protected"] == "read:PROTECTED"
    assert got["write_protected"] == "errno:30"  # EROFS
    assert got["rename_protected"] == "errno:16"  # EBUSY: a mount point cannot be moved
    assert got["unlink_protected"] == "errno:16"
    # read-only; or absent when the checkout itself lives under /tmp, which the sandbox replaces
    assert got["write_repo"] == "errno:30" or (REPO.resolve().is_relative_to("/tmp") and got["write_repo"] == "errno:2")
    assert got["create_in_root"] == "errno:30"
    assert got["create_in_home"] == "errno:30"
    assert got["list_keys"] == "list:" and got["read_key"] == "errno:2"
    assert got["read_ledger"] == "errno:2"
    assert got["read_val"] == "errno:13"  # /dev/null on a nodev mount: EACCES
    assert got["list_holdout"] == "list:" and got["read_holdout"] == "errno:2"
    assert got["read_ssh"] == "errno:2"
    assert got["unlink_dotgit"] == "errno:16" and got["write_dotgit"] == "errno:30"
    text = json.dumps(got)
    for secret in ("PRIVATE-KEY", "LEDGER", "VALIDATION-SPLIT", "HOLDOUT", "SSH-PRIVATE"):
        assert secret not in text
    assert (wt / "prepare.py").read_text() == "PROTECTED"

    # Control: without the sandbox, the same snippet reads the hidden files, so the test can fail.
    ctl = run(SandboxSpec(mode="process", workdir=wt), FILES_SNIPPET, {"CHECKS": json.dumps(
        {k: checks[k] for k in ("read_key", "read_val", "read_ledger")})})
    assert ctl == {"read_key": "read:PRIVATE-KEY", "read_val": "read:VALIDATION-SPLIT", "read_ledger": "read:LEDGER"}


@needs_bwrap
def test_no_privileges_to_undo_the_masks(layout):
    spec, p = layout
    code = f"""
    import ctypes, json, os
    caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Cap")]
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.umount2({str(p['keys'])!r}.encode(), 2)
    umount_errno = ctypes.get_errno()
    CLONE_NEWUSER = 0x10000000
    rc2 = libc.unshare(CLONE_NEWUSER)
    print(json.dumps({{"caps": caps, "umount": [rc, umount_errno], "userns": rc2,
                      "pid": os.getpid()}}))
    """
    got = run(spec, code)
    assert set(got["caps"]) == {"0000000000000000"}
    assert got["umount"][0] == -1  # EPERM or EINVAL: the key folder's mask stays
    if sandbox._bwrap_probe().disable_userns:
        assert got["userns"] == -1
    assert got["pid"] < 10  # its own pid namespace


@needs_bwrap
def test_gpu_and_shm_paths(wt):
    code = """
    import json, os
    open("/dev/shm/x", "w").write("1")
    print(json.dumps({"shm": True, "null": os.path.exists("/dev/null"), "cwd": os.getcwd()}))
    """
    got = run(SandboxSpec(mode="bwrap", workdir=wt), code)
    assert got == {"shm": True, "null": True, "cwd": str(wt.resolve())}


# --- killing ----------------------------------------------------------------------------------------

ESCAPE_SNIPPET = """
import os, sys, time
marker = os.environ["MARKER"]
if os.fork() == 0:
    os.setsid()  # leaves the runner's process group
    os.execv("/bin/sleep", ["sleep", "300", marker])
time.sleep(0.2)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("mode", CONFINED)
def test_group_kill_and_cleanup_reach_setsid_escapees(wt, mode):
    # GNU sleep sums its arguments, so a unique fraction of a second marks the escapee's command line.
    marker_arg = "0." + uuid.uuid4().int.__str__()[:12]
    spec = SandboxSpec(mode=mode, workdir=wt, limits=Limits(nproc=64))
    proc, prepared = start(spec, ESCAPE_SNIPPET, {"MARKER": marker_arg})
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert marker_pids(marker_arg), "the escapee did not start"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        prepared.cleanup()
        deadline = time.monotonic() + 10
        while marker_pids(marker_arg) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = marker_pids(marker_arg)
        if mode == "process" and not prepared.enforced["nproc_cap"]:
            assert left  # documented: process mode without a cgroup cannot reach it
        else:
            assert not left
    finally:
        stop(proc, prepared)
        kill_marked(marker_arg)


def test_cleanup_removes_the_cgroup(wt):
    spec = SandboxSpec(mode="process", workdir=wt, limits=Limits(nproc=64))
    code = "import json; print(json.dumps([l for l in open('/proc/self/cgroup') if ':pids:' in l or l.startswith('0::')]))"
    prepared = prepare(spec, "true", {})
    prepared.cleanup()
    if sandbox._pids_cgroup_parent() is None:
        pytest.skip("no writable cgroup pids controller here")
    lines = run(spec, code)
    base, version = sandbox._pids_cgroup_parent()
    names = [line.rsplit("/", 1)[-1].strip() for line in lines if "autoresearch-" in line]
    assert names, lines
    assert not (base / names[0]).exists()


def test_root_without_cgroup_says_the_cap_does_not_hold(wt, monkeypatch):
    monkeypatch.setattr(sandbox._PidsCgroup, "create", classmethod(lambda cls, n: None))
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    p = prepare(SandboxSpec(mode="process", workdir=wt, limits=Limits(nproc=64)), "true", {})
    assert not p.enforced["nproc_cap"]
    assert "process cap (64) is not enforced" in p.warning and "fork bomb" in p.warning


def test_non_root_without_cgroup_uses_rlimit_nproc_above_current_use(wt, monkeypatch):
    """RLIMIT_NPROC counts every task of the uid, so the cap is raised by what already runs."""
    monkeypatch.setattr(sandbox._PidsCgroup, "create", classmethod(lambda cls, n: None))
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    busy = sandbox._tasks_of_uid(os.getuid())
    assert busy >= 1  # at least this test's own process
    got = run(SandboxSpec(mode="process", workdir=wt, limits=Limits(nproc=64)),
              "import json, resource; print(json.dumps(resource.getrlimit(resource.RLIMIT_NPROC)))")
    assert got[0] == got[1] and got[0] >= 64 + busy - 10 and got[0] <= 64 + busy + 50


@needs_bwrap
def test_git_reads_work_but_the_branch_cannot_move(layout):
    spec, p = layout
    code = """
    import json, subprocess
    def git(*a):
        r = subprocess.run(["git", *a], capture_output=True, text=True)
        return [r.returncode, r.stdout.strip()]
    print(json.dumps({"head": git("rev-parse", "--abbrev-ref", "HEAD"),
                      "checkout": git("checkout", "-q", "-b", "elsewhere")[0],
                      "commit": git("-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qam", "x",
                                    "--allow-empty")[0]}))
    """
    got = run(spec, code, {"HOME": str(p["home"])})
    assert got["head"] == [0, "autoresearch/e1"]
    assert got["checkout"] != 0 and got["commit"] != 0
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=p["wt"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert branch == "autoresearch/e1"


@needs_bwrap
def test_caches_point_into_the_sandbox_tmp(wt):
    code = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('TRITON_CACHE_DIR', 'MPLCONFIGDIR')}))"
    got = run(SandboxSpec(mode="bwrap", workdir=wt), code)
    assert got["TRITON_CACHE_DIR"].startswith("/tmp/") and got["MPLCONFIGDIR"].startswith("/tmp/")
    got = run(SandboxSpec(mode="bwrap", workdir=wt), code, {"TRITON_CACHE_DIR": str(wt / "tc")})
    assert got["TRITON_CACHE_DIR"] == str(wt / "tc")


def test_cgroup_discovery_across_layouts():
    v1 = "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    v2 = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    hybrid_v2 = "40 31 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    find = sandbox._pids_cgroup_candidates
    # cgroup v1 (this kind of host): our own pids cgroup, root or nested.
    assert find(v1, "8:pids:/\n0::/\n") == [(Path("/sys/fs/cgroup/pids"), 1)]
    assert find(v1, "8:pids:/user.slice\n") == [(Path("/sys/fs/cgroup/pids/user.slice"), 1)]
    # Hybrid: v1 pids first, then the unified root.
    assert find(v1 + hybrid_v2, "8:pids:/\n0::/\n") == [
        (Path("/sys/fs/cgroup/pids"), 1), (Path("/sys/fs/cgroup/unified"), 2)]
    # Pure v2 (systemd hosts): the root of the hierarchy, wherever we sit in it.
    assert find(v2, "0::/user.slice/user-1000.slice/session-3.scope\n") == [(Path("/sys/fs/cgroup"), 2)]
    # A container that sees only a sub-tree of the hierarchy (mount root not "/"): no candidate.
    assert find("30 23 0:27 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n", "0::/\n") == []
    assert find("", "") == []


def test_cgroups_of_a_dead_harness_are_reaped(wt):
    """A harness killed with SIGKILL leaves its cgroup (and any escapee in it); the next one reaps it."""
    parent = sandbox._pids_cgroup_parent()
    if parent is None:
        pytest.skip("no writable cgroup pids controller here")
    # A short-lived process stands in for the dead harness: its pid names the cgroup.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = parent[0] / f"autoresearch-{dead.pid}-deadbeef0000"
    stale.mkdir()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (stale / "cgroup.procs").write_text(str(orphan.pid))
        fresh = sandbox._PidsCgroup.create(16)
        assert fresh is not None
        fresh.destroy()
        assert not stale.exists()
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()
        if stale.exists():
            stale.rmdir()
