"""API keys never show: masking for display, redaction for any text that may echo a key."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable


def mask(key: str | None) -> str:
    """``sk-abcdef123456wxyz`` -> ``sk-...wxyz``; short keys show nothing of themselves."""
    if not key:
        return "(none)"
    if len(key) < 12:
        return "***"
    prefix = key[:3] if key[:3].isalpha() or key.startswith("sk-") else ""
    return f"{prefix}...{key[-4:]}"


class Redactor:
    """Replaces every registered secret (and its obvious encodings) in text with its mask."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def __call__(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, mask(s))
        return text


REDACT = Redactor()
"""The process-wide redactor: every key loaded from any config is registered here."""


class RedactingFilter(logging.Filter):
    """Attach to the ``timmy_magic`` logger so no log record can carry a key."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACT(record.getMessage())
        record.args = ()
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A ``timmy_magic`` logger whose records are redacted (logger filters do not apply
    to records propagated from child loggers, so each one gets the filter)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
