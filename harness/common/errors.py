"""User-facing errors: each becomes one line on stderr and exit code 2 in the CLI."""


class UserError(Exception):
    """Bad input the user can fix (unknown name, missing file, bad flag value).

    The message must fit on one line and say what to do about it.
    """


class DataError(UserError):
    """Task data missing, unreadable or malformed."""


class ModelError(UserError):
    """Unknown model name, unsupported architecture, or a teacher that cannot be loaded."""


class CacheError(UserError):
    """The cache directory cannot be created or written."""
