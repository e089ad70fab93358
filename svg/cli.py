"""What every entrypoint shares: an argument parser whose errors are one line, the experiment's ``--section.field``
options, and how it ends: 0 on success, 2 with one line for bad input, 130 when interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from svg.config import PRESETS, Experiment, load_experiment


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


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (exit 2), as every project error does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--section.field`` option per Experiment field, its help the field's description and default."""
    parser.add_argument("--config", help=f"preset ({', '.join(PRESETS)}) or YAML file; overrides go on top")
    for section_name, section_field in Experiment.model_fields.items():
        group = parser.add_argument_group(section_name)
        for name, field in section_field.annotation.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default
            group.add_argument(
                f"--{section_name}.{name}",
                dest=f"{section_name}.{name}",
                metavar="V",
                default=argparse.SUPPRESS,
                help=f"{field.description} (default: {default})",
            )


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    return load_experiment(args.config, overrides)
