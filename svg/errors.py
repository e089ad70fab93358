"""The one error type that means "the user gave bad input"; entrypoints turn it into exit code 2."""


class SvgError(Exception):
    """Bad input (config, data, arguments, files). The message is one line naming what is wrong."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived during training; a checkpoint was written and the run can be resumed."""
