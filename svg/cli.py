"""How every entrypoint ends: 0 on success, 2 with one line for bad input, 130 when interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_cli(prog: str, body: Callable[[], None], resume: str = "continue with --resume") -> int:
    """Run an entrypoint's body; ``resume`` tells the user how to go on after an interruption."""
    from svg.errors import Interrupted, SvgError

    try:
        body()
    except SvgError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"{prog}: {e}; checkpoint saved, {resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse
