"""The one error type that means "the user gave bad input"; entrypoints turn it into exit code 2. And the one
line such an error quotes of the exception it replaces."""

from pydantic import ValidationError


class SvgError(Exception):
    """Bad input (config, data, arguments, files). The message is one line naming what is wrong."""


class DataError(SvgError):
    """Bad or missing data; the message names the path and what was expected there."""


class DataWarning(UserWarning):
    """A bad sequence skipped because the caller asked for skip_bad."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived during training; a checkpoint was written and the run can be resumed."""


def first_line(error: BaseException, last: bool = False) -> str:
    """The first (or ``last``) non-empty line of an exception's message, else its type's name: what a one-line
    error quotes of the exception it replaces."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(error).__name__


def validation_line(error: ValidationError) -> str:
    """A pydantic validation error's first problem as one line: the dotted field, what is wrong, what was given."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown setting"
    got = first.get("input")
    suffix = f" (got {got!r})" if where and not isinstance(got, dict) else ""
    return f"{where}: {msg}{suffix}" if where else msg
