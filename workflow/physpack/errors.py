"""Errors that the command line turns into one-line messages and exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence


class PhyspackError(Exception):
    """A user-facing error: bad input, bad configuration, inconsistent data.

    The message is one line and names the file, key and index where relevant.
    """


class InputError(PhyspackError):
    """The input file (NPZ, packed directory, checkpoint, split) is unusable."""


class ConfigError(PhyspackError):
    """A configuration value is missing, unknown or out of range."""


def cli_entry(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable]:
    """Wrap a ``main(argv) -> int`` so that user errors become one line and exit 2.

    Unexpected exceptions are not caught: their traceback is the useful output.
    """

    def decorate(main: Callable[[Sequence[str] | None], int]) -> Callable:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except PhyspackError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130

        return wrapped

    return decorate
