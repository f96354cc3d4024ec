"""`autoresearch drive`: the harness starts a confined agent and serves its `try` over a real socket.

The agents are small Python scripts in a folder listed in `[proposer] agent_paths` (so they are
in sight inside the sandbox); they call the real `autoresearch` command line, or speak MCP to
`autoresearch mcp` through the official SDK's client, and print what they got back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import sandbox
from conftest import cli, make_experiment

HAVE_BWRAP = sandbox.bwrap_available()

AGENT = r'''
import json, os, socket, subprocess, sys
from pathlib import Path
mode = sys.argv[1]
def ar(*args):
    p = subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], capture_output=True, text=True)
    print("CALL " + json.dumps({"args": list(args), "rc": p.returncode, "out": p.stdout, "err": p.stderr}), flush=True)
    return p
train = Path("train.py")
if mode == "work":
    train.write_text(train.read_text().replace("X = 3.0", "X = 1.5"))
    ar("try", "-m", "lower X to 1.5")
    train.write_text(train.read_text().replace("X = 1.5", "X = 9.0"))
    ar("try", "-m", "raise X to 9")
    ar("status")
    ar("log")
    ar("show", ".", "1")
    ar("try", "-m", "nothing changed")
    ar("show", ".", "99")
elif mode == "raw":  # the protocol itself: garbage, unknown ops, a bad id
    for line in (b"not json\n", b"[1, 2]\n", b'{"op": "rm -rf"}\n', b'{"op": "show", "id": "1"}\n', b'{"op": "try"}\n'):
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.environ["AUTORESEARCH_SOCKET"])
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        print("RAW " + s.makefile().read().strip(), flush=True)
elif mode == "mcp":
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def main():
        params = StdioServerParameters(command=sys.executable, args=["-m", "autoresearch.cli", "mcp"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                print("TOOLS " + json.dumps(sorted(t.name for t in tools.tools)), flush=True)
                train.write_text(train.read_text().replace("X = 3.0", "X = 2.0"))
                for name, args in (("try_change", {"description": "X 3 -> 2 over MCP"}), ("status", {}), ("log", {}),
                                   ("show", {"id": 1}), ("show", {"id": 42})):
                    res = await session.call_tool(name, args)
                    text = "".join(getattr(c, "text", "") for c in res.content)
                    print("TOOL " + json.dumps({"name": name, "error": bool(getattr(res, "is_error", getattr(res, "isError", False))), "text": text}), flush=True)

    anyio.run(main)
'''


def experiment(tmp_path: Path, **kw) -> tuple[Path, Path]:
    exp = make_experiment(tmp_path / "exp", baseline_runs=1, **kw)
    agents = tmp_path / "agentbin"
    agents.mkdir()
    (agents / "agent.py").write_text(AGENT)
    with open(exp / "autoresearch.toml", "a") as f:
        f.write(f'\n[proposer]\nagent_paths = ["{agents}"]\n')
    from conftest import git

    git(exp, "commit", "-qam", "agent paths")
    return exp, agents / "agent.py"


def lines(text: str, tag: str) -> list:
    return [json.loads(ln[len(tag) + 1:]) for ln in text.splitlines() if ln.startswith(tag + " ")]


def agent_output(exp: Path) -> str:
    logs = sorted((exp / ".autoresearch" / "drive").glob("agent-*.log"))
    return logs[-1].read_text()


def records(exp: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (exp / ".autoresearch/ledger.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "experiment"]


def test_an_agent_under_drive_tries_changes_through_the_socket_and_the_harness_records_them(tmp_path):
    exp, agent = experiment(tmp_path)
    res = cli("drive", exp, "--", sys.executable, agent, "work")
    assert res.returncode == 0, res.stderr
    # the baseline was measured first, by the harness
    recs = records(exp)
    assert [r["status"] for r in recs] == ["baseline", "keep", "discard"]
    assert all(r["proposal"]["confined"] is HAVE_BWRAP and r["proposal"]["via"] == "drive" for r in recs[1:])
    assert recs[1]["proposal"]["sandbox"] == ("bwrap" if HAVE_BWRAP else "process")
    assert "2 experiments, 1 kept" in res.stdout and "best 0.25" in res.stdout
    calls = lines(agent_output(exp), "CALL")
    assert calls[0]["rc"] == 0 and calls[0]["out"].startswith("keep: experiment 1 metric 0.25")
    assert calls[1]["out"].startswith("discard: experiment 2")
    assert "lower X to 1.5" in calls[3]["out"] and "raise X to 9" in calls[3]["out"]  # log
    assert "experiment 1: keep" in calls[4]["out"] and "X = 1.5" in calls[4]["out"]  # show, with its diff
    assert calls[2]["rc"] == 0 and "best" in calls[2]["out"].lower()  # status
    # refusals reach the agent as one sentence and exit 2, never a traceback
    for call, needle in ((calls[5], "no change to the editable files"), (calls[6], "no experiment 99")):
        assert call["rc"] == 2 and needle in call["err"] and "Traceback" not in call["err"]
    assert cli("verify", exp).returncode == 0


def test_malformed_requests_get_one_sentence_refusals(tmp_path):
    exp, agent = experiment(tmp_path)
    res = cli("drive", exp, "--", sys.executable, agent, "raw")
    assert res.returncode == 0, res.stderr
    replies = [json.loads(r) for r in (ln[4:] for ln in agent_output(exp).splitlines() if ln.startswith("RAW "))]
    assert [r["ok"] for r in replies] == [False] * 5
    assert "not JSON" in replies[0]["error"] and "not a JSON object" in replies[1]["error"]
    assert "unknown request" in replies[2]["error"] and "experiment number" in replies[3]["error"]
    assert "description" in replies[4]["error"]
    assert [r["status"] for r in records(exp)] == ["baseline"]


@pytest.mark.slow  # 9 s: a real MCP client and server
def test_the_mcp_server_offers_the_same_tools_over_the_same_socket(tmp_path):
    pytest.importorskip("mcp")
    exp, agent = experiment(tmp_path)
    res = cli("drive", exp, "--", sys.executable, agent, "mcp")
    assert res.returncode == 0, res.stderr
    out = agent_output(exp)
    assert lines(out, "TOOLS") == [["log", "show", "status", "try_change"]], out
    tools = {(t["name"], i): t for i, t in enumerate(lines(out, "TOOL"))}
    texts = [t["text"] for t in tools.values()]
    assert texts[0].startswith("keep: experiment 1 metric 1")
    assert "X 3 -> 2 over MCP" in texts[2] and "experiment 1: keep" in texts[3]
    last = list(tools.values())[-1]
    assert last["error"] and "no experiment 42" in last["text"]
    recs = records(exp)
    assert recs[1]["description"] == "X 3 -> 2 over MCP" and recs[1]["proposal"]["confined"] is HAVE_BWRAP


def test_try_from_an_unconfined_shell_is_recorded_as_not_confined(exp):
    assert cli("run", exp, "-n", "0").returncode == 0
    wt = exp / ".autoresearch/worktree"
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("X = 3.0", "X = 1.5"))
    res = cli("try", "-m", "lower X", cwd=wt)
    assert res.returncode == 0, res.stderr
    assert records(exp)[1]["proposal"] == {"confined": False}


def test_a_dead_socket_or_no_drive_is_one_sentence(tmp_path):
    gone = tmp_path / "gone.sock"
    res = cli("try", "-m", "x", env={"AUTORESEARCH_SOCKET": str(gone)})
    assert res.returncode == 2 and "cannot reach the harness" in res.stderr and "Traceback" not in res.stderr
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_SOCKET"}
    res = subprocess.run([sys.executable, "-m", "autoresearch.cli", "mcp"], capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 2 and "AUTORESEARCH_SOCKET is not set" in res.stderr


def test_drive_needs_the_agent_command(tmp_path):
    exp, _ = experiment(tmp_path)
    res = cli("drive", exp)
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["drive", "mcp"])
def test_drive_and_mcp_explain_themselves(command):
    res = cli(command, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout
    assert ("-- <agent" in res.stdout or "COMMAND" in res.stdout) if command == "drive" else "AUTORESEARCH_SOCKET" in res.stdout
