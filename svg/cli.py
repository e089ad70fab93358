"""How every entrypoint ends: 0 on success, 2 with one line for bad input, 130 when interrupted."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_cli(prog: str, body: Callable[[], None]) -> int:
    from svg.errors import Interrupted, SvgError

    try:
        body()
    except SvgError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"{prog}: {e}; checkpoint saved, continue with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
