"""Access-log hygiene: no token reaches the log, even from a URL that carries one.

The dashboard signs in with a POST form, but an old bookmark or a script may still send
`?token=...`; uvicorn's access log writes the full path, so its records are rewritten here.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
# token=..., access_token=..., and a bare fw_ token anywhere in the path or query.
_SECRET = re.compile(r"((?:^|[?&;])(?:access_)?token=)[^&;#\s]*|fw_[A-Za-z0-9_\-]{8,}", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}[redacted]" if m.group(1) else "fw_[redacted]", text)


class RedactTokens(logging.Filter):
    """Rewrites an access-log record's arguments (uvicorn: client, method, full path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_redaction() -> None:
    """Add the filter to uvicorn's access logger once (uvicorn configures that logger before the
    app starts and keeps logger filters when it does)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
