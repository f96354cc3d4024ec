"""`llm`: a model called through its API proposes each change.

One experiment is one short conversation: the prompt (program.md, files, history, and with
`--learn-from` a digest of what other runs of the experiment found), the model's
reply, and up to `repair_turns` more turns when its edits do not apply, touch a file outside
`editable`, break Python syntax, or repeat a change already run. Providers are the official
`openai` SDK (any OpenAI-compatible server through `base_url`) and the official `anthropic` SDK.
The API key is read from the environment variable named in the config and handed only to the SDK.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ProposalInvalid, UserError
from . import Context, Proposal, Proposer
from .edits import JSON_SCHEMA, EditError, apply_edits, check_syntax, parse_json_reply, parse_reply
from .prompt import build_prompt, render

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
OUTER_ATTEMPTS = 4  # rounds of SDK retries before an experiment is given up as invalid


@dataclass
class Reply:
    text: str
    input_tokens: int
    output_tokens: int
    truncated: bool  # stopped at max_tokens


class _Transient(Exception):
    """Rate limit, server error, timeout or lost connection that outlived the SDK's own retries."""


class _BadRequest(Exception):
    """The server refused this request's content (400/422); retrying the same request won't help."""


def files_hash(files: dict[str, str]) -> str:
    """Identity of an editable-file set: equal hashes mean identical code for the experiment."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


class _Chat:
    """One provider behind a small interface: complete(system, messages, json_mode) -> Reply.

    Servers differ in which optional request fields they take (temperature, the name of the
    token limit, structured output). A 400 that names one of them drops or renames it once and
    the request is sent again; the choice sticks for the rest of the run.
    """

    sdk: Any

    def __init__(self, config: Config, key: str):
        self.p = config.proposer
        self.key = key
        self.dropped: set[str] = set()

    def _request(self, system: str, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        raise NotImplementedError

    def _adapt(self, message: str) -> bool:
        """Drop an optional field the server named in its 400; False when there is none left to drop."""
        for name in ("temperature", "response_format", "output_config"):
            if name in message and name not in self.dropped:
                self.dropped.add(name)
                return True
        return False

    def complete(self, system: str, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        while True:
            try:
                return self._request(system, messages, json_mode)
            except self.sdk.APIError as err:
                mapped = self._classify(err)
                if isinstance(mapped, _BadRequest) and self._adapt(str(mapped)):
                    continue
                raise mapped from None

    def _classify(self, err: Exception) -> Exception:
        """Map an SDK error to what the proposer does with it."""
        p = self.p
        env = p.api_key_env or DEFAULT_KEY_ENV[p.provider]
        if isinstance(err, self.sdk.APIConnectionError):  # includes APITimeoutError
            return _Transient(f"{type(err).__name__}: {err}")
        if isinstance(err, self.sdk.APIStatusError):
            status = err.status_code
            if status in (401, 403):
                return UserError(
                    f"The {p.provider} API rejected the key in ${env} (HTTP {status}); put a valid key in that "
                    "variable, or name another one with [proposer] api_key_env in autoresearch.toml."
                )
            if status == 404:
                where = p.base_url or f"the {p.provider} API"
                return UserError(
                    f"{where} answered 404 for model '{p.model}'; set [proposer] model (and base_url) in "
                    "autoresearch.toml to a model that server serves."
                )
            if status in (408, 409, 429) or status >= 500:
                return _Transient(f"HTTP {status}: {_short(err)}")
            return _BadRequest(f"HTTP {status}: {_short(err)}")
        return err

    def close(self) -> None:
        self.client.close()


def _short(err: Exception) -> str:
    msg = getattr(err, "message", None) or str(err)
    return str(msg)[:300]


class _OpenAIChat(_Chat):
    def __init__(self, config: Config, key: str):
        super().__init__(config, key)
        import openai

        self.sdk = openai
        self.client = openai.OpenAI(
            api_key=key,
            base_url=self.p.base_url or None,
            timeout=self.p.request_timeout,
            max_retries=self.p.max_retries,
        )
        # The official API wants max_completion_tokens (reasoning models reject max_tokens);
        # many compatible servers only know max_tokens.
        self.token_param = "max_tokens" if self.p.base_url else "max_completion_tokens"

    def _adapt(self, message: str) -> bool:
        if self.token_param in message and "token_param" not in self.dropped:
            self.dropped.add("token_param")
            self.token_param = "max_completion_tokens" if self.token_param == "max_tokens" else "max_tokens"
            return True
        return super()._adapt(message)

    def _request(self, system: str, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        kwargs: dict[str, Any] = {
            "model": self.p.model,
            "messages": [{"role": "system", "content": system}, *messages],
            self.token_param: self.p.max_tokens,
        }
        if "temperature" not in self.dropped:
            kwargs["temperature"] = self.p.temperature
        if json_mode and "response_format" not in self.dropped:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "proposal", "schema": JSON_SCHEMA, "strict": True},
            }
        resp = self.client.chat.completions.create(**kwargs)
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content if choice and choice.message else None) or ""
        usage = resp.usage
        return Reply(
            text=text,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            truncated=bool(choice and choice.finish_reason == "length"),
        )


class _AnthropicChat(_Chat):
    def __init__(self, config: Config, key: str):
        super().__init__(config, key)
        import anthropic

        self.sdk = anthropic
        self.client = anthropic.Anthropic(
            api_key=key,
            base_url=self.p.base_url or None,
            timeout=self.p.request_timeout,
            max_retries=self.p.max_retries,
        )

    def _request(self, system: str, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        # Optional fields go through extra_body: SDK versions differ in which keywords they accept.
        extra: dict[str, Any] = {}
        if "temperature" not in self.dropped:
            extra["temperature"] = self.p.temperature
        if json_mode and "output_config" not in self.dropped:
            extra["output_config"] = {"format": {"type": "json_schema", "schema": JSON_SCHEMA}}
        resp = self.client.messages.create(
            model=self.p.model,
            system=system,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=self.p.max_tokens,
            extra_body=extra or None,
        )
        text = "".join(getattr(b, "text", "") for b in resp.content if getattr(b, "type", "") == "text")
        return Reply(
            text=text,
            input_tokens=int(resp.usage.input_tokens or 0),
            output_tokens=int(resp.usage.output_tokens or 0),
            truncated=resp.stop_reason == "max_tokens",
        )


class LLMProposer(Proposer):
    name = "llm"

    def __init__(self, config: Config, history: list[dict[str, Any]]):
        super().__init__(config, history)
        p = config.proposer
        if not p.model:
            raise UserError("autoresearch.toml: [proposer] model is empty; set it to the model's name, e.g. model = \"gpt-5.1\".")
        env = p.api_key_env or DEFAULT_KEY_ENV[p.provider]
        key = os.environ.get(env, "")
        if not key:
            if not p.base_url:
                raise UserError(
                    f"${env} is not set; export your {p.provider} API key in it, or name another variable with "
                    "[proposer] api_key_env in autoresearch.toml."
                )
            key = "not-needed"  # local OpenAI-compatible servers usually take no key
        self.json_mode = p.response_format == "json_schema"
        self.retry_backoff = p.retry_backoff
        self._chat: _Chat = _OpenAIChat(config, key) if p.provider == "openai" else _AnthropicChat(config, key)
        self._seen: dict[str, str] = {}  # files_hash -> "#id (status)" for changes already proposed
        self._pending: str | None = None
        self.learned = ""  # the digest of other runs (--learn-from), shown in every prompt
        self.learned_from: list[str] = []

    def learn_from(self, dirs: list[Path], warn: Any = None) -> bool:
        """Show the model a digest of what other runs of this experiment kept and refuted."""
        from .digest import build_digest, read_runs, sources

        runs = read_runs(dirs, self.config, warn=warn)
        self.learned, self.learned_from = build_digest(runs, self.config), sources(runs)
        return True

    # -- one API call, with our own backoff around the SDK's retries --------------------------

    def _complete(self, system: str, messages: list[dict[str, str]]) -> Reply:
        last = ""
        for attempt in range(OUTER_ATTEMPTS):
            try:
                return self._chat.complete(system, messages, self.json_mode)
            except _Transient as err:
                last = str(err)
                if attempt + 1 < OUTER_ATTEMPTS:
                    time.sleep(self.retry_backoff * (4**attempt))
        raise _Transient(f"the {self.config.proposer.provider} API kept failing ({last})")

    # -- the conversation -----------------------------------------------------------------------

    def propose(self, ctx: Context) -> Proposal:
        p = self.config.proposer
        if ctx.feedback and self._pending is not None:
            # The loop refused our last change as a duplicate of one already run: never offer it again.
            self._seen[self._pending] = "an earlier proposal"
            self._pending = None
        run_dir = Path(ctx.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(run_dir.glob("prompt-*.md")))  # a refused proposal's retry continues the numbering
        system, user = build_prompt(ctx, json_mode=self.json_mode, learned=self.learned)
        messages: list[dict[str, str]] = [{"role": "user", "content": user}]
        usage = {"input_tokens": 0, "output_tokens": 0}
        latency = 0.0
        repairs: list[str] = []
        turns = 0

        def meta(**extra: Any) -> dict[str, Any]:
            cost = (usage["input_tokens"] * p.price_input_per_mtok + usage["output_tokens"] * p.price_output_per_mtok) / 1e6
            out = {
                "provider": p.provider,
                "model": p.model,
                "usage": dict(usage),
                "cost_usd": round(cost, 6),
                "latency_s": round(latency, 3),
                "turns": turns,
            }
            if repairs:
                out["repairs"] = repairs
            if self.learned_from:  # which other runs the prompt quoted; none of their records
                out["learned_from"] = list(self.learned_from)
            out.update(extra)
            return out

        for turn in range(1 + max(0, p.repair_turns)):
            n += 1
            turns += 1
            shown = render(system, messages) if turn == 0 else render("", messages[-1:])
            (run_dir / f"prompt-{n}.md").write_text(shown, encoding="utf-8")
            t0 = time.monotonic()
            try:
                reply = self._complete(system, messages)
            except _Transient as err:
                latency += time.monotonic() - t0
                raise _invalid(str(err), meta()) from None
            except _BadRequest as err:
                latency += time.monotonic() - t0
                raise _invalid(f"the {p.provider} API refused the request: {err}", meta()) from None
            latency += time.monotonic() - t0
            usage["input_tokens"] += reply.input_tokens
            usage["output_tokens"] += reply.output_tokens
            (run_dir / f"reply-{n}.md").write_text(reply.text, encoding="utf-8")
            try:
                description, changed, kind = self._read(reply, ctx)
            except EditError as err:
                error = str(err)
                if reply.truncated:
                    error += f" (the reply was cut off at max_tokens={p.max_tokens}; send smaller edits)"
                repairs.append(error[:500])
                messages.append({"role": "assistant", "content": reply.text or "(empty reply)"})
                messages.append({"role": "user", "content": _repair_message(error, self.json_mode)})
                continue
            self._pending = files_hash({**ctx.files, **changed})
            return Proposal(description=description, edits=changed, meta=meta(format=kind))
        last = repairs[-1] if repairs else "no reply"
        raise _invalid(f"no valid edit after {turns} replies: {last}", meta())

    def _read(self, reply: Reply, ctx: Context) -> tuple[str, dict[str, str], str]:
        """Parse and apply the reply; EditError says exactly what to fix."""
        if not reply.text.strip():
            raise EditError("the reply was empty")
        known = sorted(ctx.files)
        parsed = parse_json_reply(reply.text) if self.json_mode else parse_reply(reply.text, known)
        changed = apply_edits(ctx.files, parsed.edits, self.config.experiment.editable)
        check_syntax(changed)
        digest = files_hash({**ctx.files, **changed})
        if digest in self._seen:
            raise EditError(f"this change is identical to {self._seen[digest]}, which already ran; propose a different change")
        description = parsed.description
        if not description or description in known:
            description = "edit " + ", ".join(sorted(changed))
        return description[:300], changed, parsed.kind

    def observe(self, record: dict[str, Any]) -> None:
        if self._pending is not None:
            self._seen[self._pending] = f"experiment #{record.get('id')} ({record.get('status')})"
            self._pending = None

    def close(self) -> None:
        self._chat.close()


def _invalid(reason: str, meta: dict[str, Any]) -> ProposalInvalid:
    """ProposalInvalid carrying the tokens spent, so the ledger still counts the cost."""
    return ProposalInvalid(reason, meta)


def _repair_message(error: str, json_mode: bool) -> str:
    how = (
        "Reply again with one corrected JSON object."
        if json_mode
        else "Reply again with the DESCRIPTION line and corrected SEARCH/REPLACE blocks; copy SEARCH text exactly from the current files."
    )
    return f"Your edit could not be applied: {error}\n\nThe files are unchanged. {how}"


__all__ = ["LLMProposer", "files_hash"]
