"""Run by `autoresearch init DIR --template security` in DIR, after the template's files are copied
and before the first commit (this file itself is not copied): fetches bottle into the folder."""

import subprocess
import sys

done = subprocess.run([sys.executable, "prepare.py"])
if done.returncode != 0:
    sys.exit(done.returncode)
print("this template needs code changes, not knobs: set [proposer] kind = \"llm\", \"agent\" or \"hybrid\" "
      "and a model in autoresearch.toml (see README.md) before `autoresearch run`")
