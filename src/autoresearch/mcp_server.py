"""`autoresearch mcp`: the agent-driven tools as an MCP server (stdio), for agents that prefer tools.

It runs inside the agent's sandbox, as the agent's child, and holds nothing: each tool forwards
over `$AUTORESEARCH_SOCKET` to the harness that `autoresearch drive` started, exactly as the
`autoresearch try/status/log/show` commands do. Register it with the agent once, e.g.
`claude mcp add autoresearch -- autoresearch mcp`.
"""

from __future__ import annotations

from typing import Any

from .drive import SOCKET_ENV, request, under_drive
from .errors import UserError

INSTRUCTIONS = (
    "Tools of an autoresearch run. Edit the experiment's editable files in the working directory, then "
    "call try_change with a one-line description: the harness commits, runs, measures and records the "
    "change, and keeps it or resets the files. You never report a number; the harness measures it. "
    "status, log and show(id) read the record."
)


def _server_class() -> Any:
    try:  # mcp >= 2
        from mcp.server.mcpserver import MCPServer

        return MCPServer
    except ImportError:
        pass
    try:
        from mcp.server.fastmcp import FastMCP

        return FastMCP
    except ImportError:
        raise UserError('autoresearch mcp needs the MCP SDK; install it with pip install "autoresearch[agent]"') from None


def build() -> Any:
    """The server with its four tools; each returns the text the matching command prints."""
    server = _server_class()("autoresearch", instructions=INSTRUCTIONS)

    @server.tool()
    def try_change(description: str) -> str:
        """Run, judge and record the uncommitted change to the editable files. Returns the verdict line."""
        return _forward("try", description=description)

    @server.tool()
    def status() -> str:
        """Best so far, counts by status, and the last experiments."""
        return _forward("status", last=10)

    @server.tool()
    def log() -> str:
        """Every experiment so far, kept or not, one line each."""
        return _forward("log", status=None)

    @server.tool()
    def show(id: int) -> str:  # noqa: A002 - the tool's argument name is part of its interface
        """One experiment: metrics, decision, reason, diff and log tail."""
        return _forward("show", id=id, lines=30)

    return server


def _tool_error() -> type[Exception]:
    """The SDK's "anticipated failure": its message reaches the model (others show only a generic line)."""
    try:
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:
        from mcp.server.fastmcp.exceptions import ToolError
    return ToolError


def _forward(op: str, **args: Any) -> str:
    try:
        return request(op, **args)["output"]
    except UserError as err:  # a refusal is the tool's answer, not a crash of the server
        raise _tool_error()(str(err)) from None


def serve() -> None:
    if not under_drive():
        raise UserError(f"autoresearch mcp forwards to `autoresearch drive`, and {SOCKET_ENV} is not set; "
                        "start the agent with `autoresearch drive DIR -- <agent command>`")
    build().run("stdio")
