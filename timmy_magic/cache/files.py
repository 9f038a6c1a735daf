"""Opening the cache file: whose file it is, making a new one, moving a damaged one aside.

**Why SQLite in WAL mode.** Two kernels may use one cache file at once. SQLite (standard
library) gives atomic writes and cross-process locking without a server; WAL lets readers
go on while one writer commits, and a busy timeout makes a writer wait for another instead
of failing.

**Never touches a file that is not ours.** The path may come from a mistake
(``$TIMMY_CACHE_PATH`` naming a notes file), so a file is used only when it is provably
ours: its SQLite header holds our ``application_id``. A damaged file is moved aside as
``<name>.corrupt-<timestamp>`` (with one warning, and a fresh cache made) only when it is
ours by its header, or is a SQLite-named file inside our own cache directory (the
default one) that SQLite cannot read or that holds nothing. Anything else is never moved,
renamed or written (a text or empty file elsewhere, another program's database anywhere,
a directory): the cache is off for the session, one warning says why. A new cache is built
whole in a temporary file (0600) and linked into place, so no other kernel ever sees it
half made and no file that appeared meanwhile is replaced; a directory we create is 0700:
the file holds prompts (kernel values, cells). A cache file we may read but not write (a
replay file in a read-only checkout) is opened read-only: answers are served, none
recorded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from timmy_magic.cache.settings import default_path
from timmy_magic.privacy.redact import get_logger
from timmy_magic.text.markup import shorten

log = get_logger("timmy_magic.cache")

BUSY_TIMEOUT_S = 5.0
APPLICATION_ID = 0x544D4331  # "TMC1", in the database header: this file is ours
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
"""The SQLite database header: the application id is at offset 68."""
OWN_SUFFIXES = (".sqlite3", ".sqlite", ".db")
"""A file in our own cache directory with one of these names may be a damaged cache of
ours (moved aside); any other file there (the GGUF the embedded server keeps) is never
touched."""
WARNING_CHARS = 300

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key       TEXT PRIMARY KEY,
    value     TEXT NOT NULL,
    created   REAL NOT NULL,
    last_used REAL NOT NULL,
    size      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_last_used ON answers (last_used);
"""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)


class _NotOurs(Exception):
    """The file at the path is not an answer cache of ours: it is never moved or written."""


def reason(exc: BaseException) -> str:
    """An exception as one short line: an OSError's own words (its path may be long), a
    SQLite error's message, else the type and the message."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, sqlite3.Error | _NotOurs):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return shorten(text, WARNING_CHARS)


def _our_header(header: bytes) -> bool:
    """A SQLite database header holding our application id."""
    return (len(header) >= 100 and header.startswith(SQLITE_MAGIC)
            and int.from_bytes(header[68:72], "big") == APPLICATION_ID)


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV,
                  errno.EMLINK}


def _make_dirs(path: Path) -> None:
    """``path`` and its missing parents, each made 0700 (the cache holds prompts); one
    that exists is left as it is."""
    missing: list[Path] = []
    here = path
    while not here.is_dir() and not here.exists() and here.parent != here:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


class CacheFile:
    """One cache file being opened: ``open`` gives the connection or None (one warning
    says why, in ``problem``), never raises. ``path`` is the path as used (``~``
    expanded); ``read_only``: answers may be served, none stored."""

    def __init__(self, path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.problem: str | None = None
        self.read_only = False

    def open(self) -> sqlite3.Connection | None:
        """The connection, or None (one warning says why): never raises."""
        try:
            return self._open_ours()
        except _NotOurs as exc:
            why = f"{exc}; it is left as it is"
        except Exception as exc:  # noqa: BLE001 - a cache that cannot open is off
            why = reason(exc)
        self._unavailable(why)
        return None

    def _open_ours(self) -> sqlite3.Connection | None:
        self.path = self.path.expanduser()  # "~nobody/...": RuntimeError, the cache is off
        kind = self._inspect()
        if kind == "absent":
            self._create_file()
        elif kind == "damaged":
            return self._recover("not a database", unless_ours_now=True)
        try:
            return self._connect_waiting()
        except sqlite3.OperationalError as exc:
            conn = self._read_only_fallback(reason(exc))
            if conn is None:
                raise
            return conn
        except _NotOurs:
            raise
        except sqlite3.DatabaseError as exc:  # ours by its header, damaged inside
            return self._recover(reason(exc))

    def _header(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(HEADER_BYTES)

    def _inspect(self) -> Literal["absent", "ours", "damaged"]:
        """Whose file is at the path: none (``absent``), ours by its header (``ours``), or
        one of ours that is damaged (``damaged``: not a database, in our own cache
        directory). Any other file is ``_NotOurs``: it is never moved or written."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "absent"
        if not stat.S_ISREG(st.st_mode):
            raise _NotOurs("it is a directory" if stat.S_ISDIR(st.st_mode)
                           else "it is not a regular file")
        header = self._header()
        if _our_header(header):
            return "ours"
        sqlite = header.startswith(SQLITE_MAGIC)
        if self._in_own_dir() and (not sqlite or self._damaged_or_empty()):
            return "damaged"
        if sqlite:
            raise _NotOurs("the file is another program's SQLite database")
        raise _NotOurs("the file is not an answer cache (not a SQLite database of ours)")

    def _damaged_or_empty(self) -> bool:
        """A file with a SQLite header that SQLite cannot read, or a database with no
        application id and nothing in it (a cache whose making was cut short by an older
        version). Read as it is on disk (``immutable``): nothing is written."""
        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error:
            return False  # cannot even be opened: left alone
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.OperationalError:
            return False
        except sqlite3.DatabaseError:  # "file is not a database", "malformed"
            return True
        finally:
            conn.close()
        return bool(app_id == 0 and tables == 0)

    def _in_own_dir(self) -> bool:
        """The path is a SQLite-named file inside our own (the default) cache directory."""
        try:
            here = self.path.resolve()
            own = default_path().parent.resolve()
        except Exception:  # noqa: BLE001 - where our directory is, unknown: not ours
            return False
        return here.suffix.lower() in OWN_SUFFIXES and here.parent.is_relative_to(own)

    def _create_file(self) -> None:
        """A new cache, built whole in a temporary file beside the path (0600) and linked
        into place: another kernel sees no file or a complete one, and a file that
        appeared meanwhile (another kernel's) is never replaced."""
        _make_dirs(self.path.parent)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=".timmy-cache-",
                                    suffix=".tmp")
        os.close(fd)
        try:
            conn = sqlite3.connect(name, isolation_level=None)
            try:
                self._create(conn)
                conn.execute("PRAGMA journal_mode = WAL")  # kept in the header
            finally:
                conn.close()
            try:
                os.link(name, self.path)
            except FileExistsError:
                pass  # another kernel linked its own first: that one is used
            except OSError as exc:  # a file system without hard links
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                if not os.path.lexists(self.path):
                    os.replace(name, self.path)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name + suffix)

    def _read_only_fallback(self, why: str) -> sqlite3.Connection | None:
        """A cache we may read but not write (a replay file in a read-only checkout):
        answers are served, none recorded."""
        if not os.path.isfile(self.path):
            return None
        try:
            conn = self._connect_read_only()
        except (sqlite3.Error, _NotOurs):
            return None
        self.read_only, self.problem = True, f"read-only: {why}"
        log.warning("answer cache %s is read-only (%s): recorded answers are served, new "
                    "ones are not stored", self.path, why)
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise _NotOurs("the file is another program's SQLite database")
        except BaseException:
            conn.close()
            raise
        return conn

    def _recover(self, why: str, *,
                 unless_ours_now: bool = False) -> sqlite3.Connection | None:
        """A damaged cache of ours: move it aside and start afresh. ``unless_ours_now``:
        another kernel may have done so a moment ago; its new cache is used, not moved."""
        try:
            if unless_ours_now and _our_header(self._header()):
                return self._connect_waiting()
            aside = self._move_aside()
            self._create_file()
            conn = self._connect_waiting()
        except _NotOurs:
            raise
        except Exception as again:  # noqa: BLE001 - reported as the reason it is off
            self._unavailable(f"damaged ({why}) and could not be replaced: "
                              f"{reason(again)}")
            return None
        log.warning("answer cache %s was damaged (%s): moved aside to %s, a new cache "
                    "was started", self.path, why, aside.name)
        return conn

    def _move_aside(self) -> Path:
        """Rename the file (and its WAL) to ``<name>.corrupt-<stamp>``: only a file that is
        provably ours, checked again here (another kernel may have replaced it)."""
        if not self._in_own_dir() and not _our_header(self._header()):
            raise _NotOurs("the file is not an answer cache (not a SQLite database of ours)")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        self.path.rename(aside)
        for suffix in ("-wal", "-shm", "-journal"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        return aside

    def _unavailable(self, why: str) -> None:
        """Caching is off for this object: one warning says why."""
        self.problem = why
        log.warning("answer cache %s cannot be used (%s): caching is off for this session",
                    self.path, why)

    def _connect_waiting(self) -> sqlite3.Connection:
        """Connect, waiting out another kernel that is switching the file to WAL right
        now: SQLite reports "database is locked" for that at once, without calling the
        busy handler, so the busy timeout alone does not cover it."""
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.005
        while True:
            try:
                return self._connect()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _connect(self) -> sqlite3.Connection:
        """The file as it is (``mode=rw``: SQLite never creates one here; a new cache is
        made by ``_create_file`` only)."""
        uri = self.path.resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s,
                               isolation_level=None, check_same_thread=False)
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("BEGIN")  # one snapshot
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        if app_id != APPLICATION_ID:
            raise _NotOurs("the file is another program's SQLite database")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if not tables:
            self._create(conn)

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
