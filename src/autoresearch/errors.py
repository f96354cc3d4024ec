"""Errors a user can cause. The CLI prints them as one sentence and exits 2; never a traceback."""


class UserError(Exception):
    """Bad input from the user: config, folder state, arguments. The message names the file and the fix."""


class ConfigError(UserError):
    """autoresearch.toml is malformed or inconsistent."""


class ProposalInvalid(Exception):
    """A proposer produced a change that cannot be applied (bad edit, outside `editable`, bad syntax).

    The loop records the attempt as `invalid` and nothing runs. `meta` is what the attempt cost and
    said (tokens, the model's reply), kept in the record."""

    def __init__(self, reason: str, meta: dict | None = None):
        super().__init__(reason)
        self.meta: dict = dict(meta or {})
