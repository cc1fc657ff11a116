"""Error types that map to the command line's exit statuses.

`UsageError` (exit 2) means the command, a config or the data is wrong: its message names the
file, field or value and says how to fix it. Anything else that escapes a cell is recorded as a
failed cell (exit 1 at the end of the run).
"""

from __future__ import annotations


class UsageError(Exception):
    """The user asked for something that cannot work (bad name, bad config, missing data)."""


class ConfigError(UsageError):
    """A YAML config is malformed; the message carries `file:line` and the offending key."""


class DataError(UsageError):
    """The data root or a data file is missing, unreadable or does not match its manifest."""
