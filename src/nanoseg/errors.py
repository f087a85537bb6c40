"""User-facing errors.

Every problem a user can fix (bad file, bad setting, missing weights) is raised
as :class:`NanosegError` with a message that names the file, says what is wrong
and what to do. The command line and the DVC stage entry points print such
errors as one short paragraph, without a traceback, and exit with status 2.
Whatever nanoseg prints about stores, URIs and servers goes through
:func:`mask_secrets` first.
"""

from __future__ import annotations

import functools
import os
import re
import sys

_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<password>[^/\s@]+)@")
_ACCESS_KEY_ID = re.compile(r"\b(?P<kind>AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")
_NAMED_SECRET = re.compile(r"(?i)\b(?P<name>aws_secret_access_key|aws_session_token|secret_?key|password|passwd|token"
                           r"|x-amz-(?:signature|credential|security-token))(?P<sep>\s*[=:]\s*)(?P<value>[^\s&,;'\"]+)")


def one_line(text, limit: int | None = None) -> str:
    """``text`` (an error, a value) on one line: runs of whitespace and control characters become one
    space; at most ``limit`` characters (``...`` at the end) when given."""
    text = re.sub(r"[\s\x00-\x1f\x7f]+", " ", str(text)).strip()
    return text if limit is None or len(text) <= limit else text[: limit - 3].rstrip() + "..."


class NanosegError(Exception):
    """An error the user can fix; its message is shown as is (secrets masked)."""


def mask_secrets(text) -> str:
    """``text`` with credentials replaced by ``***``.

    Masks the password of ``scheme://user:password@host`` URIs (tracking, S3 and database URLs),
    AWS access key ids (``AKIA...``), ``name=value`` pairs whose name says secret (password,
    token, aws_secret_access_key, presigned-URL signatures), and the values of the secret
    environment variables (``AWS_SECRET_ACCESS_KEY``, ...) wherever they appear.

    Parameters
    ----------
    text : object
        Converted with ``str``.

    Returns
    -------
    str
    """
    text = str(text)
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _ACCESS_KEY_ID.sub(lambda m: f"{m['kind']}***", text)
    return _NAMED_SECRET.sub(lambda m: f"{m['name']}{m['sep']}***", text)


def report_errors(func):
    """Decorate an entry point: print :class:`NanosegError` cleanly (secrets masked) and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except NanosegError as exc:
            print(f"nanoseg: error: {mask_secrets(exc)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("nanoseg: interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
