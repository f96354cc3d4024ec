"""`setup` (protected): make sure the load generator and the service's packages are here. Idempotent.

wrk comes from the system's packages: where it is missing and this runs as root with apt-get, it
is installed (`apt-get install -y wrk`, after an `apt-get update` if the first try finds nothing);
otherwise this stops with the command to run. The Python packages come with
`pip install "autoresearch[api]"` (starlette, uvicorn, httptools, uvloop, orjson, pytest).
"""

import importlib.util
import os
import shutil
import subprocess
import sys

missing = [m for m in ("starlette", "uvicorn", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"prepare: missing Python packages {', '.join(missing)}: run pip install \"autoresearch[api]\" and run again")
optional = [m for m in ("httptools", "uvloop", "orjson") if importlib.util.find_spec(m) is None]
if optional:
    print(f"prepare: {', '.join(optional)} not installed: the knobs that select them (HTTP_PARSER, EVENT_LOOP, ORJSON = 1) "
          "will fail; pip install \"autoresearch[api]\" brings them")


def apt_install() -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for update in (False, True):
        if update:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True).returncode == 0:
            return True
    return False


if shutil.which("wrk") is None:
    print("prepare: wrk not found; installing it with apt-get", flush=True)
    if not apt_install() or shutil.which("wrk") is None:
        sys.exit("prepare: the load generator wrk is not installed and could not be installed here; "
                 "install it (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install wrk) and run again")
out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
print(f"prepare: {(out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else 'wrk'} at {shutil.which('wrk')}; "
      f"{len(os.sched_getaffinity(0))} cores for the service and the load")
