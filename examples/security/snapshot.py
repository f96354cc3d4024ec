"""`run`: copy the candidate's bottle.py into the artifacts folder, where the protected evaluate.py
reads it (evaluate sees only protected files). Protected. The library's code is not executed here."""

import hashlib
import os
import shutil
import sys
from pathlib import Path

artifacts = os.environ.get("AUTORESEARCH_ARTIFACTS")
if not artifacts:
    sys.exit("snapshot.py: AUTORESEARCH_ARTIFACTS is not set; run it through `autoresearch run`")
src = Path(__file__).resolve().parent / "bottle.py"
shutil.copyfile(src, Path(artifacts) / "bottle.py")
print(f"snapshot of bottle.py: {sum(1 for _ in src.open(encoding='utf-8'))} lines, "
      f"sha256 {hashlib.sha256(src.read_bytes()).hexdigest()}")
