"""Data errors and warnings, so callers can tell bad data from bugs."""

from svg.errors import SvgError


class DataError(SvgError):
    """Bad or missing data; the message names the path and what was expected there."""


class DataWarning(UserWarning):
    """A bad sequence skipped because the caller asked for skip_bad."""
