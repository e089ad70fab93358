"""The one error type that means "the user gave bad input"; entrypoints turn it into exit code 2."""


class SvgError(Exception):
    """Bad input (config, data, arguments, files). The message is one line naming what is wrong."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived during training; a checkpoint was written and the run can be resumed."""


def first_line(error: BaseException, last: bool = False) -> str:
    """The first (or ``last``) non-empty line of an exception's message, else its type's name: what a one-line
    error quotes of the exception it replaces."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(error).__name__
