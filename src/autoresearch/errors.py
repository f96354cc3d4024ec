"""Errors a user can cause. The CLI prints them as one sentence and exits 2; never a traceback."""


class UserError(Exception):
    """Bad input from the user: config, folder state, arguments. The message names the file and the fix."""


class ConfigError(UserError):
    """autoresearch.toml is malformed or inconsistent."""


class ProposalInvalid(Exception):
    """A proposer produced a change that cannot be applied (bad edit, outside `editable`, bad syntax).

    The loop records the attempt as `invalid` and nothing runs."""
