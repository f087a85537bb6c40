"""User-facing errors.

Every problem a user can fix (bad file, bad setting, missing weights) is raised
as :class:`NanosegError` with a message that names the file, says what is wrong
and what to do. The command line and the DVC stage entry points print such
errors as one short paragraph, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import functools
import sys


class NanosegError(Exception):
    """An error the user can fix; its message is shown as is."""


def report_errors(func):
    """Decorate an entry point: print :class:`NanosegError` cleanly and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except NanosegError as exc:
            print(f"nanoseg: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("nanoseg: interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
