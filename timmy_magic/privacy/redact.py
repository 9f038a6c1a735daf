"""Secrets never show: masking for display, redaction for any text that may echo one.

``REDACT`` is the one redaction point. Config loading registers every secret a config holds
(API keys, header values, URL passwords, secret query values) with its usual encodings
(percent-encoded, base64 ``user:password`` as HTTP Basic sends it); on top of that,
``Redactor.__call__`` masks what no config registered but plainly is a credential: a
``Bearer`` token, a ``Basic`` header, an ``sk-`` key, a ``key=``/``token=``-style value, a
URL password. Every error (``errors.clean_message``), log record (``get_logger``) and
shown URL passes through it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

HIDDEN = "***"
"""What a password, a Basic credential or a secret query value shows as (no part of it)."""
MIN_SECRET = 4
"""A secret shorter than this is never masked: masking it would rewrite ordinary words."""
_PARAM_NAME = (r"(?:[A-Za-z0-9]+[-_.])*(?:api[-_]?key|apikey|key|token|secret|password|"
               r"passwd|pwd|pass|sig|signature|credential|auth|session)")
"""Query parameter names whose value is a secret: ``key``, ``api-key``, ``access_token``,
``X-Amz-Signature``... (not ``max_tokens`` nor ``monkey``)."""
_SECRET_PARAM = re.compile(_PARAM_NAME, re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(^|[&;])([^=&;]*)=([^&;]*)")
_TOKENS = (
    r"(?<![A-Za-z0-9])(?P<sk>sk-(?:ant-)?[A-Za-z0-9_-]{8,})"
    r"|(?<![A-Za-z0-9_])(?P<token_kind>gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|hf_[A-Za-z0-9]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|glpat-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{30,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
    r"|(?<![A-Za-z0-9/+=])(?P<aws_secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
    r"|(?P<pem>-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z))")
"""Credentials recognised by their shape: OpenAI/Anthropic ``sk-``, GitHub ``ghp_``/
``github_pat_``, Hugging Face ``hf_``, Slack ``xox.-``, AWS access key ids and 40-character
secret keys, GitLab, npm, JWTs, and private-key PEM blocks (to the end of the text when
its END line is missing)."""
_GENERIC = re.compile(
    r"(?P<bearer>\bbearer\s+)(?P<token>[A-Za-z0-9._~+/=-]{8,})"
    r"|(?P<basic>\bBasic\s+)(?P<b64>[A-Za-z0-9+/]{8,}={0,2})"
    rf"|{_TOKENS}"
    r"|(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@]*(?:@[^\s/?#@]*)*)@"
    rf"|(?<![\w.-])(?P<param>{_PARAM_NAME})=(?P<value>[^\s&;#\"'<>,)\]}}}}]{{4,}})",
    re.IGNORECASE)
_NOT_SECRET = {"none", "null", "true", "false", HIDDEN}
SECRET_WORDS = (r"(?:password|passwd|passphrase|pwd|pass|secret|token|api_?key|apikey|"
                r"access_?key|private_?key|secret_?key|client_?secret|credentials?|auth)")
"""Names whose value is a secret, as the end of a longer name (``db_password``)."""
_SEGMENT = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SECRET_SEGMENTS = frozenset({
    "password", "passwd", "passphrase", "pwd", "pass", "secret", "secrets", "token",
    "apikey", "credential", "credentials", "auth", "authtoken", "accesstoken",
    "accesskey", "secretkey", "privatekey", "refreshtoken", "clientsecret", "cookie"})
_KEY_QUALIFIERS = frozenset({
    "api", "access", "secret", "private", "client", "auth", "signing", "encryption",
    "master", "license", "subscription", "service", "account", "app", "admin"})
_NOT_SECRET_LAST = frozenset({
    "sock", "path", "file", "dir", "url", "uri", "host", "port", "user", "username",
    "name", "id", "type", "mode", "len", "length", "size", "count", "limit", "timeout",
    "env", "region", "endpoint", "kind", "enabled", "required", "expiry", "expires",
    "hash", "header", "prefix", "format", "policy", "field", "column"})


@functools.lru_cache(maxsize=4096)  # asked for every environment variable of every request
def is_secret_name(name: str, *, env: bool | None = None) -> bool:
    """Does a variable, key, column or field of this name hold a secret? ``MYSQL_PWD``,
    ``DB_PASS``, ``NPM_AUTH``, ``OPENAI_API_KEY``, ``apiKey``, ``password`` do;
    ``max_tokens``, ``KEYBOARD``, ``SSH_AUTH_SOCK``, ``API_KEY_ID`` do not. A bare ``key``
    counts after a qualifier (``api``, ``access``, ``secret``...), and for an environment
    variable (``env``, or a name in capitals) as the last part of a longer name
    (``STRIPE_KEY``)."""
    parts = [p.lower() for p in _SEGMENT.findall(name)]
    while parts and parts[-1].isdigit():
        parts.pop()
    if not parts or parts[-1] in _NOT_SECRET_LAST:
        return False
    if any(p in _SECRET_SEGMENTS for p in parts):
        return True
    if env is None:
        env = name.isupper()
    for i, p in enumerate(parts):
        if p == "key" and i > 0 and (parts[i - 1] in _KEY_QUALIFIERS
                                     or (env and i == len(parts) - 1)):
            return True
    return False


def may_name_secret(text: str) -> bool:
    """A cheap test: could ``text`` hold a secret-named assignment? (All the names in
    ``SECRET_WORDS`` contain one of these.)"""
    lower = text.lower()
    return any(w in lower for w in ("pass", "pwd", "secret", "token", "key", "auth", "cred"))


def find_credentials(text: str, replacement: str = HIDDEN) -> tuple[str, int]:
    """``text`` with every credential recognised by its shape (see ``_TOKENS``; a Bearer or
    Basic credential, a URL password) replaced by ``replacement``, keeping what says what
    it was (``Bearer ``, ``scheme://user:``). ``name=value`` is left alone: in code it is
    an argument (``api_key=key``). Returns the text and how many were replaced."""
    count = 0

    def one(m: re.Match[str]) -> str:
        nonlocal count
        if m.group("value") is not None:
            return m.group()
        if m.group("token") is not None:
            out = _generic(m)
            if out == m.group():
                return out
            count += 1
            return m.group("bearer") + replacement
        if m.group("userinfo") is not None:
            user, colon, password = m.group("userinfo").partition(":")
            if colon and password:
                count += 1
                return f"{m.group('scheme')}{user}:{replacement}@"
            if not colon and len(user) >= 16:
                count += 1
                return f"{m.group('scheme')}{replacement}@"
            return m.group()
        out = _generic(m)
        if out == m.group():
            return out
        count += 1
        if m.group("basic") is not None:
            return m.group("basic") + replacement
        return replacement

    return _GENERIC.sub(one, text), count


def mask(key: str | None) -> str:
    """``sk-abcdef123456wxyz`` -> ``sk-...wxyz``; short keys show nothing of themselves."""
    if not key:
        return "(none)"
    if len(key) < 12:
        return "***"
    prefix = key[:3] if key[:3].isalpha() or key.startswith("sk-") else ""
    return f"{prefix}...{key[-4:]}"


def _may_hold_credential(text: str) -> bool:
    """A cheap test before the generic patterns: each of them needs one of these (the
    40-character AWS secret shape needs nothing, so a text that long is always looked at)."""
    return ("=" in text or "@" in text or "sk-" in text or "_" in text or "-" in text
            or "earer" in text or "EARER" in text or "Basic" in text or "eyJ" in text
            or "AKIA" in text or "ASIA" in text or len(text) >= 40)


def _generic(m: re.Match[str]) -> str:
    if m.group("token") is not None:
        token = m.group("token")
        looks_random = any(c.isdigit() for c in token) or len(token) >= 20
        return m.group("bearer") + mask(token) if looks_random else m.group()
    if m.group("b64") is not None:
        return m.group("basic") + HIDDEN if ":" in _b64_text(m.group("b64")) else m.group()
    if m.group("sk") is not None:
        return mask(m.group("sk"))
    if m.group("token_kind") is not None:
        return mask(m.group("token_kind"))
    if m.group("aws_secret") is not None:
        token = m.group("aws_secret")
        shaped = (any(c.isupper() for c in token) and any(c.islower() for c in token)
                  and any(c.isdigit() for c in token))
        return mask(token) if shaped else token
    if m.group("pem") is not None:
        return "-----BEGIN PRIVATE KEY----- " + HIDDEN + " -----END PRIVATE KEY-----"
    if m.group("userinfo") is not None:
        return m.group("scheme") + _shown_userinfo(m.group("userinfo")) + "@"
    value = m.group("value")
    if value.lower() in _NOT_SECRET:
        return m.group()
    return f"{m.group('param')}={HIDDEN}"


def _b64_text(b64: str) -> str:
    try:
        return base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True).decode()
    except (binascii.Error, ValueError):
        return ""


def _shown_userinfo(userinfo: str) -> str:
    """``user:password`` -> ``user:***``; a lone long user name is a token (``TOKEN@host``)."""
    user, colon, password = userinfo.partition(":")
    if colon:
        return f"{user}:{HIDDEN}" if password else userinfo
    return HIDDEN if len(user) >= 16 else user


class Redactor:
    """Replaces every registered secret (and its encodings) in text with its mask, then
    masks whatever else plainly is a credential (``_GENERIC``)."""

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}
        self._table: tuple[re.Pattern[str] | None, dict[str, str]] = (None, {})
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None], *, hide: bool = False) -> None:
        """Register secrets: each shows as ``mask(s)`` (``hide``: as ``***``); its
        percent-encoded forms are registered with it."""
        new = {}
        for s in secrets:
            if not s or len(s) < MIN_SECRET:
                continue
            for form in {s, quote(s, safe=""), quote_plus(s, safe="")}:
                if form not in self._shown:
                    new[form] = HIDDEN if hide else mask(s)
        if new:
            with self._lock:
                self._shown = {**self._shown, **new}
                longest_first = sorted(self._shown, key=len, reverse=True)
                pattern = re.compile("|".join(map(re.escape, longest_first)))
                self._table = (pattern, self._shown)

    def add_header(self, name: str, value: str) -> None:
        """A header value: the whole of it, a Bearer token, a Basic credential decoded."""
        self.add([value])
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer":
            self.add([credential])
        elif scheme.lower() == "basic":
            self.add([credential], hide=True)
            self._add_user_password(_b64_text(credential))

    def add_url(self, url: str) -> None:
        """A URL's password (and ``user:password``, and its base64 as Basic auth sends
        it), a long lone user name, and the values of secret query parameters."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        userinfo = parts.netloc.rpartition("@")[0]
        if userinfo:
            user, colon, _ = userinfo.partition(":")
            if colon:
                for decoded in {userinfo, unquote(userinfo)}:
                    self._add_user_password(decoded)
            elif len(user) >= 16:
                self.add([user, unquote(user)])
        for _, name, value in _QUERY_PAIR.findall(parts.query):
            if _SECRET_PARAM.fullmatch(unquote_plus(name)):
                self.add([value, unquote_plus(value)])

    def _add_user_password(self, user_password: str) -> None:
        user, colon, password = user_password.partition(":")  # noqa: RUF059
        if not colon or not password:
            return
        b64 = base64.b64encode(user_password.encode()).decode()
        self.add([user_password, password, b64], hide=True)

    def split_safe(self, text: str) -> int:
        """How much of streamed ``text`` can be masked and shown now: all of it but a tail
        that is the start of a registered secret (which may complete with the next
        piece), never cutting through a whole one. The rest waits for more text; most of
        the time nothing waits (a tail rarely starts a key)."""
        pattern, shown = self._table
        if pattern is None or not text:
            return len(text)
        longest = max(map(len, shown))
        firsts = {k[0] for k in shown}
        cut = len(text)
        for i in range(max(0, len(text) - longest + 1), len(text)):
            if text[i] in firsts:
                tail = text[i:]
                if any(len(k) > len(tail) and k.startswith(tail) for k in shown):
                    cut = i
                    break
        for m in pattern.finditer(text, max(0, cut - longest)):
            if m.start() < cut < m.end():
                return m.start()
        return cut

    def registered(self) -> tuple[str, ...]:
        """Every registered secret, in every form registered."""
        return tuple(self._table[1])

    def known(self, text: str) -> str:
        """Only the registered secrets masked, not what merely looks like a credential:
        for a model's answer, where ``password=hunter2`` in an example is the answer's
        text, but a configured key a hostile server puts in the stream is not."""
        pattern, shown = self._table
        return pattern.sub(lambda m: shown[m.group()], text) if pattern is not None else text

    def __call__(self, text: str) -> str:
        pattern, shown = self._table
        if pattern is not None:
            text = pattern.sub(lambda m: shown[m.group()], text)
        if _may_hold_credential(text):
            text = _GENERIC.sub(_generic, text)
        return text


REDACT = Redactor()
"""The process-wide redactor: every secret loaded from any config is registered here."""


def display_url(url: str) -> str:
    """``url`` as it may be shown: password and secret query values masked (every other
    byte as it was), then redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACT(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{_shown_userinfo(userinfo)}@{host}" if at else parts.netloc

    def pair(m: re.Match[str]) -> str:
        secret = _SECRET_PARAM.fullmatch(unquote_plus(m.group(2))) and m.group(3)
        return f"{m.group(1)}{m.group(2)}={HIDDEN}" if secret else m.group()

    query = _QUERY_PAIR.sub(pair, parts.query)
    return REDACT(urlunsplit(parts._replace(netloc=netloc, query=query)))


class RedactingFilter(logging.Filter):
    """Attach to the ``timmy_magic`` logger so no log record can carry a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACT(record.getMessage())
        record.args = ()
        return True


_FILTER = RedactingFilter()
_REDACTED_LOGGERS = ("timmy_magic", "httpx", "httpcore")
_base_factory = logging.getLogRecordFactory()


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record of our loggers and of the HTTP client's, however the logger was made
    (``logging.getLogger("timmy_magic.x")`` too), is redacted where it is created: a
    logger's filter would miss records its children propagate."""
    record = _base_factory(*args, **kwargs)
    if record.name.startswith(_REDACTED_LOGGERS):
        record.msg = REDACT(record.getMessage())
        record.args = ()
    return record


if getattr(_base_factory, "__name__", "") != "_redacting_factory":  # not twice on reload
    logging.setLogRecordFactory(_redacting_factory)


def get_logger(name: str) -> logging.Logger:
    """A ``timmy_magic`` logger whose records are redacted (logger filters do not apply
    to records propagated from child loggers, so each one gets the filter)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.connection_pool",
                "httpcore.http11", "httpcore.http2", "httpcore.proxy", "httpcore.socks")
"""The HTTP client's loggers: httpx logs every request URL at INFO (a URL may hold a
password or a key in its query), httpcore response headers at DEBUG. httpcore creates its
child loggers lazily, per trace; ``logging.getLogger`` hands out the same object then."""


def redact_http_logs() -> None:
    """Put the redacting filter on the HTTP client's loggers (idempotent). A record is only
    made, and filtered, when its level is enabled: no cost on the hot path otherwise."""
    for name in HTTP_LOGGERS:
        get_logger(name)

