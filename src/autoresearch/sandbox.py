"""How an experiment process is confined: `none`, `process`, `bwrap`, or `auto`.

The runner calls `prepare(spec, command, env)` and starts
`Popen(p.argv, env=p.env, preexec_fn=p.preexec_fn, start_new_session=True, cwd=spec.workdir)`,
kills the process group when it is done or out of time, and then calls `p.cleanup()`.

What each mode holds (as enforced, not as hoped):

- `none`: nothing; the command runs as the user would run it.
- `process`: resource limits set before exec (address space, file size, CPU seconds, no core dumps),
  a process cap, and an environment stripped of secrets. The process cap is a cgroup `pids.max` when
  the cgroup file system is writable (root on most hosts), else RLIMIT_NPROC raised by the user's
  current process count (that limit counts every process of the uid; as root it does not hold at
  all, and `enforced["nproc_cap"]` says so). Network, files outside the worktree, hidden files and the
  private key stay reachable, and a child that calls setsid() escapes the runner's group kill
  (`cleanup()` still reaps it when a cgroup is in use). It guards against accidents, not a hostile
  process running as root.
- `bwrap`: Bubblewrap adds its own namespaces: no network (a loopback of its own; unix sockets under
  /run and /tmp are out of sight), its own pid namespace (when the first process dies the kernel
  kills every other, so the runner's group kill reaches setsid() escapees too), no capabilities, no
  nested user namespaces, `/` read-only, the worktree and `writable` folders read-write, `readonly`
  paths (protected files) read-only over the read-write worktree, `hidden` paths replaced by an empty
  folder or /dev/null, and a fresh /tmp, /dev (plus GPU device nodes) and /proc.
  Everything outside the worktree, the writable folders and /tmp is read-only, ~/.cache included
  (TRITON_CACHE_DIR and MPLCONFIGDIR point into /tmp unless set), and so is the worktree's `.git`.
  A hidden file that git tracks can still be read from the repository's object store unless the
  repository's git folder is hidden too. With `hide_home` the home folder is an empty throw-away
  folder but for the Python installation and the `visible` paths bound back read-only: a
  credential file no deny-list names (~/.npmrc, ~/.cargo/credentials, a cloud CLI's folder) is out
  of reach as well. `visible` paths also show through a hidden folder (a data folder's training
  split, with its held-out split and the download it came from hidden).
  `--die-with-parent` kills the sandbox when the thread that started it exits: start it from a
  thread that outlives it. A SIGTERM to the group ends the sandbox at once, with no grace: bwrap
  dies of it, and its pid namespace goes with it (so does the namespace when the shell, its first
  process, exits). There is no `--new-session`: the runner's own new session already takes the
  terminal away, so TIOCSTI would need CAP_SYS_ADMIN, which is dropped.
- `auto`: `bwrap` where it works on this machine, else `process` with a warning naming what is lost.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import os
import resource
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import UserError

MODES = ("none", "process", "bwrap", "auto")

# Environment variables that look like credentials (matched case-insensitively on the whole name).
# Deliberately not "*TOKEN*": TOKENIZERS_PARALLELISM is an ordinary knob.
SECRET_PATTERNS = (
    "*_API_KEY", "*_APIKEY", "API_KEY", "*_KEY", "*_KEY_ID", "*_TOKEN", "TOKEN", "*SECRET*",
    "*PASSWORD*", "*PASSWD*", "AWS_*", "*_CREDENTIALS", "*_CREDENTIAL", "*_PRIVATE_KEY*",
    "*_ACCESS_KEY*", "*_AUTH", "DATABASE_URL", "*_DSN", "SSH_AUTH_SOCK", "GPG_AGENT_INFO", "NETRC",
    "KRB5CCNAME", "GITHUB_TOKEN", "GH_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
)

# Credential files in the user's home that `run` has no business reading; hidden under bwrap.
HOME_SECRETS = (
    ".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc", ".git-credentials", ".pypirc",
    ".config/gh", ".config/gcloud", ".config/autoresearch", ".cache/huggingface/token",
    ".huggingface/token", ".claude", ".claude.json", ".codex", ".config/anthropic", ".config/openai",
)

# GPU device nodes that bwrap's minimal /dev lacks.
_GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")

# Caches whose default lives under the (read-only) home and whose writer fails rather than falls
# back; pointed into the sandbox's own /tmp unless the caller set them. ~/.cache itself stays
# read-only: `evaluate` may read data from it that `run` must not be able to rewrite.
_BWRAP_CACHE_ENV = {"TRITON_CACHE_DIR": "/tmp/.cache/triton", "MPLCONFIGDIR": "/tmp/.cache/matplotlib"}

_CGROUP_PREFIX = "autoresearch-"  # then "<harness pid>-<random>"
_TMP_TMPFS_BYTES = 4 << 30  # the sandbox's own /tmp
_MASK_TMPFS_BYTES = 1 << 20  # a hidden folder becomes an empty tmpfs; writes to it go nowhere useful
_HOME_TMPFS_BYTES = 256 << 20  # a hidden home: room for the dot-files tools write there
_BWRAP_OWN_PROCS = 3  # bwrap's outer process and its pid-1 reaper count against the process cap


@dataclass(frozen=True)
class Limits:
    """Resource limits for one experiment; None = unlimited."""

    address_space: int | None = None  # bytes; leave None for CUDA, which reserves huge virtual ranges
    nproc: int | None = None  # processes and threads at once
    fsize: int | None = None  # bytes, largest file the experiment may write
    cpu_seconds: int | None = None  # per process

    @classmethod
    def default(cls) -> "Limits":
        """Bounds that stop a runaway without getting in the way of real training."""
        cores = os.cpu_count() or 1
        # Threads count against the cap: torch starts about one per core per process.
        return cls(nproc=max(4096, 64 * cores), fsize=64 << 30)


@dataclass
class SandboxSpec:
    mode: str  # "none" | "process" | "bwrap" | "auto"
    workdir: Path  # the worktree; writable
    writable: list[Path] = field(default_factory=list)  # artifacts folder, a private tmp dir
    readonly: list[Path] = field(default_factory=list)  # protected files inside the worktree
    hidden: list[Path] = field(default_factory=list)  # must not be visible at all (key dir, state dir)
    secrets: list[str] = field(default_factory=list)  # extra env var names (or globs) to strip
    limits: Limits = field(default_factory=Limits)
    network: bool = False
    # The home folder becomes an empty throw-away folder (credentials a deny-list misses stay out of
    # reach), except the Python installation and `visible` paths.
    hide_home: bool = False
    visible: list[Path] = field(default_factory=list)  # read-only, even inside a hidden folder or the home
    # For an agent proposer: env names kept although they look like secrets (its own API key),
    # HOME_SECRETS entries it may see (its own config), and a folder bound over the home folder so
    # nothing else of the user's home is in sight (bwrap only).
    keep_env: list[str] = field(default_factory=list)
    reveal: list[Path] = field(default_factory=list)
    home: Path | None = None
    overlay: dict[Path, Path] = field(default_factory=dict)  # bwrap: path -> file shown there, read-only
    # bwrap only: argv the command runs under inside the sandbox (loopback.HostBridge.wrap: the
    # chosen host loopback ports, carried across the network cut). Other modes cut no network.
    bwrap_prefix: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str]
    preexec_fn: Callable[[], None] | None
    mode: str  # the mode actually used ("auto" resolved)
    warning: str | None  # what was asked for but is not enforced here; print it once
    # Each promise and whether it holds in this run (goes into the record): env_stripped, rlimits,
    # nproc_cap, no_network, readonly_fs, hidden, pid_namespace.
    enforced: dict[str, bool] = field(default_factory=dict)
    cleanup: Callable[[], None] = field(default=lambda: None)  # after the group is dead: reap, free cgroup
    stripped: list[str] = field(default_factory=list)  # names of env vars removed


def prepare(spec: SandboxSpec, command: str, env: dict[str, str]) -> Prepared:
    """Turn a shell command into the argv, env and pre-exec hook that confine it as `spec` asks."""
    if spec.mode not in MODES:
        raise ValueError(f"unknown sandbox mode {spec.mode!r}; use one of {', '.join(MODES)}")
    shell = ["/bin/sh", "-c", command]
    if spec.mode == "none":
        return Prepared(argv=shell, env=dict(env), preexec_fn=None, mode="none", warning=None, enforced=_promises())

    mode, warnings = spec.mode, []
    probe = _bwrap_probe()
    if mode == "auto":
        if probe.ok:
            mode = "bwrap"
        else:
            mode = "process"
            warnings.append(
                f"bubblewrap does not work here ({probe.reason}), so sandbox \"auto\" falls back to "
                "\"process\": the network, files outside the worktree, hidden files and the private key "
                "stay reachable by `run`; install it (apt-get install bubblewrap) to enforce them"
            )
    elif mode == "bwrap" and not probe.ok:
        raise UserError(
            f"sandbox = \"bwrap\" in autoresearch.toml, but bubblewrap does not work here ({probe.reason}); "
            "install it (apt-get install bubblewrap) or set sandbox = \"auto\""
        )

    clean_env, stripped = strip_secrets(env, spec.secrets)
    for name in spec.keep_env:
        if name in env and name in stripped:
            clean_env[name] = env[name]
            stripped.remove(name)
    argv = shell
    if mode == "bwrap":
        argv = _bwrap_argv(spec, probe) + spec.bwrap_prefix + shell
        for name, path in _BWRAP_CACHE_ENV.items():
            clean_env.setdefault(name, path)
    extra = _BWRAP_OWN_PROCS if mode == "bwrap" else 0
    cgroup = _PidsCgroup.create(spec.limits.nproc + extra) if spec.limits.nproc else None
    preexec, nproc_held = _make_preexec(spec.limits, cgroup, extra)
    if spec.limits.nproc and not nproc_held:
        warnings.append(
            f"the process cap ({spec.limits.nproc}) is not enforced: running as root without a writable "
            "cgroup pids controller, so a fork bomb is only stopped by the timeout"
        )

    bw = mode == "bwrap"
    enforced = _promises(
        env_stripped=True, rlimits=True, nproc_cap=nproc_held, no_network=bw and not spec.network,
        readonly_fs=bw, hidden=bw, pid_namespace=bw,
    )
    return Prepared(
        argv=argv,
        env=clean_env,
        preexec_fn=preexec,
        mode=mode,
        warning="; ".join(warnings) or None,
        enforced=enforced,
        cleanup=cgroup.destroy if cgroup else (lambda: None),
        stripped=stripped,
    )


def _promises(**held: bool) -> dict[str, bool]:
    names = ("env_stripped", "rlimits", "nproc_cap", "no_network", "readonly_fs", "hidden", "pid_namespace")
    return {name: bool(held.get(name, False)) for name in names}


def bwrap_available() -> bool:
    """Whether Bubblewrap runs here with the flags `prepare` uses (tried once per process)."""
    return _bwrap_probe().ok


def strip_secrets(env: dict[str, str], extra: list[str] = ()) -> tuple[dict[str, str], list[str]]:
    """A copy of `env` without credential-like variables, and the names removed."""
    patterns = [p.upper() for p in SECRET_PATTERNS]
    extra_exact = {x for x in extra if not any(c in x for c in "*?[")}
    extra_globs = [x for x in extra if x not in extra_exact]
    kept, removed = {}, []
    for name, value in env.items():
        upper = name.upper()
        if (
            name in extra_exact
            or any(fnmatch.fnmatchcase(name, g) for g in extra_globs)
            or any(fnmatch.fnmatchcase(upper, p) for p in patterns)
        ):
            removed.append(name)
        else:
            kept[name] = value
    return kept, sorted(removed)


# --- resource limits ----------------------------------------------------------------------------


def _make_preexec(
    limits: Limits, cgroup: "_PidsCgroup | None", extra_procs: int
) -> tuple[Callable[[], None], bool]:
    """A pre-exec hook doing only syscalls on precomputed values (it runs between fork and exec)."""
    rlimits: list[tuple[int, tuple[int, int]]] = [(resource.RLIMIT_CORE, (0, 0))]
    if limits.address_space:
        rlimits.append((resource.RLIMIT_AS, (limits.address_space, limits.address_space)))
    if limits.fsize:
        rlimits.append((resource.RLIMIT_FSIZE, (limits.fsize, limits.fsize)))
    if limits.cpu_seconds:
        # SIGXCPU at the soft limit lets a process notice; SIGKILL follows at the hard one.
        rlimits.append((resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5)))
    nproc_held = cgroup is not None
    if limits.nproc and cgroup is None and os.geteuid() != 0:
        # RLIMIT_NPROC counts every task of the uid, so leave room for what already runs.
        cap = limits.nproc + extra_procs + _tasks_of_uid(os.getuid())
        rlimits.append((resource.RLIMIT_NPROC, (cap, cap)))
        nproc_held = True
    # Never raise a limit above what the harness itself runs under.
    rlimits = [(r, _no_higher(r, soft, hard)) for r, (soft, hard) in rlimits]
    procs_file = cgroup.procs_file if cgroup else None

    def preexec() -> None:
        if procs_file is not None:
            fd = os.open(procs_file, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" moves the writing process itself
            finally:
                os.close(fd)
        for res, value in rlimits:
            resource.setrlimit(res, value)

    return preexec, nproc_held


def _no_higher(res: int, soft: int, hard: int) -> tuple[int, int]:
    cur_soft, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    return soft, hard


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) now running as `uid`; 0 if unknown."""
    total = 0
    try:
        entries = os.scandir("/proc")
    except OSError:
        return 0
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
                total += int(stat.rsplit(b")", 1)[1].split()[17])  # num_threads
            except (OSError, ValueError, IndexError):
                continue
    return total


class _PidsCgroup:
    """A throw-away cgroup whose pids.max caps the experiment's processes; holds even for root."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version
        self.procs_file = str(path / "cgroup.procs")

    @classmethod
    def create(cls, max_pids: int) -> "_PidsCgroup | None":
        parent = _pids_cgroup_parent()
        if parent is None:
            return None
        cls._reap_stale(*parent)
        path, version = parent[0] / f"{_CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}", parent[1]
        try:
            path.mkdir()
        except OSError:
            return None
        try:
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            cls(path, version).destroy()
            return None
        return cls(path, version)

    @classmethod
    def _reap_stale(cls, parent: Path, version: int) -> None:
        """Remove cgroups left by a harness that died (SIGKILL, power loss), killing what they hold."""
        try:
            names = [e.name for e in os.scandir(parent) if e.name.startswith(_CGROUP_PREFIX) and e.is_dir()]
        except OSError:
            return
        for name in names:
            try:
                owner = int(name[len(_CGROUP_PREFIX):].split("-", 1)[0])
                os.kill(owner, 0)
                continue  # its harness is alive
            except ValueError:
                continue
            except ProcessLookupError:
                cls(parent / name, version).destroy()
            except OSError:
                continue

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def destroy(self) -> None:
        """Kill whatever is left inside (setsid() escapees in process mode) and remove the cgroup."""
        kill_file = self.path / "cgroup.kill"
        deadline = time.monotonic() + 5.0
        while True:
            pids = self.pids()
            if not pids:
                try:
                    self.path.rmdir()
                    return
                except FileNotFoundError:
                    return
                except OSError:
                    pass  # tasks still leaving; try again
            elif kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                return  # leave an empty-ish cgroup behind rather than hang the loop
            time.sleep(0.01)


@functools.cache
def _pids_cgroup_parent() -> tuple[Path, int] | None:
    """Where this process may create a pids-limited child cgroup, and the cgroup version."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for base, version in _pids_cgroup_candidates(mountinfo, own):
        if version == 1:
            if os.access(base, os.W_OK):
                return base, 1
            continue
        try:
            if "pids" not in (base / "cgroup.controllers").read_text().split():
                continue
            # Only the root may hold processes and enable controllers for its children.
            control = base / "cgroup.subtree_control"
            if "pids" not in control.read_text().split():
                control.write_text("+pids")
        except OSError:
            continue
        if os.access(base, os.W_OK):
            return base, 2
    return None


def _pids_cgroup_candidates(mountinfo: str, own: str) -> list[tuple[Path, int]]:
    """From /proc/self/mountinfo and /proc/self/cgroup: folders that could hold our child cgroup,
    best first. v1: our own cgroup in the pids hierarchy (v1 lets a cgroup with processes have
    children). v2: the root of the unified hierarchy (only the root may, so our own cgroup can't)."""
    v1_mount = v2_mount = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup" and "pids" in rfields[2].split(","):
            v1_mount = (Path(fields[4]), fields[3])
        elif rfields[0] == "cgroup2":
            v2_mount = (Path(fields[4]), fields[3])
    own_v1 = own_v2 = None
    for line in own.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, cg = rest.partition(":")
        if "pids" in ctrls.split(","):
            own_v1 = cg
        elif hid == "0" and ctrls == "":
            own_v2 = cg
    found = []
    if v1_mount and own_v1 is not None:
        mount, root = v1_mount
        rel = os.path.relpath(own_v1, root)  # our cgroup, relative to what this mount shows
        if not rel.startswith(".."):
            found.append((mount if rel == "." else mount / rel, 1))
    if v2_mount and own_v2 is not None and v2_mount[1] == "/":
        found.append((v2_mount[0], 2))
    return found


# --- bubblewrap -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    ok: bool
    reason: str
    exe: str = ""
    userns: bool = False
    disable_userns: bool = False
    size: bool = False


@functools.cache
def _bwrap_probe() -> _Probe:
    exe = shutil.which("bwrap")
    if exe is None:
        return _Probe(False, "the bwrap command is not installed")
    version = _bwrap_version(exe)
    size = version >= (0, 7)
    reason = ""
    for userns, disable in ((True, version >= (0, 8)), (False, False)):
        probe = _Probe(True, "", exe, userns, disable, size)
        argv = _bwrap_base(probe, network=False) + ["--", "/bin/true"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            reason = str(e)
            continue
        if done.returncode == 0:
            return probe
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return _Probe(False, f"bwrap fails: {reason}")


def _bwrap_version(exe: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(x) for x in out.split()[-1].split(".")[:3])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return (0,)


def _bwrap_base(probe: _Probe, network: bool) -> list[str]:
    argv = [probe.exe]
    if probe.userns:
        argv.append("--unshare-user")
        if probe.disable_userns:
            argv.append("--disable-userns")
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        argv.append("--unshare-net")
    argv += ["--die-with-parent", "--cap-drop", "ALL"]
    # A fresh /tmp, capped when bwrap can size a tmpfs (else it could fill half the RAM).
    tmp_size = ["--size", str(_TMP_TMPFS_BYTES)] if probe.size else []
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *tmp_size, "--tmpfs", "/tmp"]
    if not network and os.path.isdir("/run"):
        # Unix sockets ignore read-only mounts (docker.sock, agents): keep them out of reach.
        argv += ["--tmpfs", "/run"]
    return argv


def _interpreter_under_tmp() -> list[Path]:
    """The harness's Python (a venv, a CI checkout) when it lives under /tmp, which the sandbox
    replaces with a fresh tmpfs: bound back read-only so `python` still means the same Python."""
    import sys

    out = []
    for prefix in {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent.parent)}:
        p = Path(prefix).resolve()
        if p.is_relative_to("/tmp") and p != Path("/tmp"):
            out.append(p)
    return out


def _python_paths() -> list[Path]:
    """Where the harness's Python, its packages and autoresearch itself live: bound back read-only
    when the sandbox hides the home folder (pyenv, a venv or a checkout under ~)."""
    import site
    import sys

    paths = {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent.parent),
             str(Path(__file__).resolve().parents[1])}
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's site module may lack these
        pass
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return [Path(p) for p in sorted(paths)]


def _bwrap_argv(spec: SandboxSpec, probe: _Probe) -> list[str]:
    argv = _bwrap_base(probe, spec.network)
    for dev in sorted({d for pattern in _GPU_DEVICES for d in glob.glob(pattern)}):
        argv += ["--dev-bind", dev, dev]

    workdir = spec.workdir.resolve()
    # The worktree's .git file ties it to the run branch: `run` may not delete or redirect it.
    readonly = [*spec.readonly, workdir / ".git", *_interpreter_under_tmp()]
    home = Path.home()
    revealed = {p.resolve() for p in spec.reveal}
    hidden = [*spec.hidden, *(home / rel for rel in HOME_SECRETS if (home / rel).resolve() not in revealed)]
    if spec.hide_home or spec.home is not None:
        readonly += [p for p in _python_paths() if p.resolve().is_relative_to(home.resolve())]
    if spec.hide_home and spec.home is None:
        hidden.append(home)
    readonly += spec.visible
    # (path, rank, args): parents are mounted before children so a child mount lands on top;
    # at the same path, hidden beats readonly beats writable.
    ops: dict[tuple[str, int], list[str]] = {}
    if spec.home is not None:  # the user's home is replaced; paths under it are bound back on top
        ops[(str(home.resolve()), 3)] = ["--bind", str(spec.home.resolve()), str(home.resolve())]
    for dest, src in spec.overlay.items():
        ops[(str(dest.resolve()), 3)] = ["--ro-bind", str(src.resolve()), str(dest.resolve())]
    for p in [workdir, *spec.writable]:
        p = p.resolve()
        if not p.is_file():  # a file is bound as it is (an agent's ~/.claude.json)
            p.mkdir(parents=True, exist_ok=True)
        ops[(str(p), 0)] = ["--bind", str(p), str(p)]
    for p in readonly:
        p = p.resolve()
        if p.exists():
            ops[(str(p), 1)] = ["--ro-bind", str(p), str(p)]
    for p in hidden:
        p = p.resolve()
        if p.is_dir():
            size = ["--size", str(_HOME_TMPFS_BYTES if p == home.resolve() else _MASK_TMPFS_BYTES)] if probe.size else []
            ops[(str(p), 2)] = [*size, "--tmpfs", str(p)]
        elif p.exists():
            ops[(str(p), 2)] = ["--ro-bind", "/dev/null", str(p)]
    for (path, rank) in sorted(ops, key=lambda k: (len(Path(k[0]).parts), k[0], k[1])):
        argv += ops[(path, rank)]
    argv += ["--chdir", str(workdir), "--"]
    return argv
