"""The files the user trusted with ``%llm trust``: absolute path and sha256 of the bytes
trusted, in ``trusted.json`` in the user config dir (as direnv's ``allow`` and mise's
``trust`` record them). A file whose bytes changed needs trusting again.

The store is written atomically (a temporary file in the same folder, then
``os.replace``) under an advisory lock, so two kernels trusting at once lose nothing. A
missing store is empty; an unreadable or corrupt one is empty too, with a warning (the next
``%llm trust`` rewrites it). Which files need no entry here is ``config.trust_reason``'s
business.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from timmy_magic.privacy.redact import get_logger

log = get_logger("timmy_magic.config.trust")
STORE_NAME = "trusted.json"
VERSION = 1


@dataclass(frozen=True, slots=True)
class TrustEntry:
    path: str
    sha256: str
    trusted_at: str

    def status(self) -> str:
        """"matches", "changed" (trust it again) or "missing", from the file as it is now."""
        try:
            data = Path(self.path).read_bytes()
        except OSError:
            return "missing"
        return "matches" if digest(data) == self.sha256 else "changed"


def config_dir() -> Path:
    """The user config dir of timmy-magic (its providers.yaml and this store live there)."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("timmy-magic"))


def store_path() -> Path:
    return config_dir() / STORE_NAME


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries() -> list[TrustEntry]:
    """The trusted files, oldest first. Never raises: a bad store reads as empty."""
    path = store_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("trust store %s is unreadable (%s): no file is trusted by it", path, exc)
        return []
    try:
        rows = json.loads(text)["trusted"]
        return [_entry(row) for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("trust store %s is corrupt (%s): no file is trusted by it; "
                    "%%llm trust rewrites it", path, type(exc).__name__)
        return []


def _entry(row: object) -> TrustEntry:
    if not isinstance(row, dict):
        raise TypeError("an entry is not an object")
    entry = TrustEntry(str(row["path"]), str(row["sha256"]), str(row.get("trusted_at", "")))
    if len(entry.sha256) != 64 or not os.path.isabs(entry.path):
        raise ValueError("an entry is not an absolute path and a sha256")
    return entry


def is_trusted(path: Path, sha256: str) -> bool:
    """Was ``path`` (absolute, resolved) trusted with exactly these bytes?"""
    return any(e.path == str(path) and e.sha256 == sha256 for e in entries())


def trust(path: Path, data: bytes) -> TrustEntry:
    """Record ``path`` (made absolute and resolved) as trusted with the bytes ``data``.
    Raises OSError if the store cannot be written."""
    real = str(path.expanduser().resolve())
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    entry = TrustEntry(real, digest(data), now)
    with _locked():
        _write([e for e in entries() if e.path != real] + [entry])
    return entry


def untrust(path: Path) -> bool:
    """Forget ``path``; False if it was not in the store."""
    real = str(path.expanduser().resolve())
    with _locked():
        old = entries()
        kept = [e for e in old if e.path != real]
        if len(kept) == len(old):
            return False
        _write(kept)
    return True


def _write(rows: list[TrustEntry]) -> None:
    path = store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": VERSION, "trusted": [asdict(e) for e in rows]}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{STORE_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """An advisory lock around read-modify-write (POSIX; elsewhere last writer wins)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    lock = store_path().with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
