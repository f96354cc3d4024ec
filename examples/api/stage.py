"""`run` (protected): stage the service for the evaluator. Nothing of the service runs here.

Copies the editable app.py into $AUTORESEARCH_ARTIFACTS/service/ and compiles it (nothing is
executed, nothing written), so a change that does not even parse fails as `run` with the compiler's message. The protected
evaluate.py then starts the service from that copy (it sees only the protected files and the
artifacts, never the checkout); the guard tests the same code as committed.
"""

import hashlib
import os
import shutil
import sys
from pathlib import Path

SERVICE_FILES = ["app.py"]

out = Path(os.environ.get("AUTORESEARCH_ARTIFACTS", "artifacts")) / "service"
out.mkdir(parents=True, exist_ok=True)
for name in SERVICE_FILES:
    shutil.copy2(name, out / name)
    try:
        compile((out / name).read_bytes(), str(name), "exec")
    except (SyntaxError, ValueError) as e:
        print(f"{name} does not compile: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"staged {name} sha256 {hashlib.sha256((out / name).read_bytes()).hexdigest()[:16]}")
