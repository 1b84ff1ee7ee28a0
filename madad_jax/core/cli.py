"""Command-line parsing that reports a bad argument in one line, without a usage dump."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable


class UsageError(Exception):
    """A bad command line; the message is the one line to print."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, raising `UsageError` instead of printing the usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def run_command(name: str, parse: Callable[[list[str]], argparse.Namespace],
                body: Callable[[argparse.Namespace], list[str]],
                argv: list[str] | None = None) -> int:
    """Parse `argv`, run `body` and print the lines it returns; exit code 0, 1 or 2.

    A bad command line and any error in `body` end as one line on stderr (`NAME: usage
    error: ...` with code 2, `NAME: error: ...` with code 1); `--verbose` adds the traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv
    try:
        args = parse(argv)
    except UsageError as e:
        print(f"{name}: usage error: {e}", file=sys.stderr)
        return 2
    try:
        lines = body(args)
    except Exception as e:  # noqa: BLE001 - one line per error, as CONTRACT asks
        if verbose:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{name}: error: {msg}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
