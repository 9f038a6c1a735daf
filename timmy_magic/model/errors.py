"""The one error tree of timmy_magic. Every public exception is a TimmyError, wherever it
is defined (a test walks the package and checks it); nothing derives from BaseException
directly. The two interrupts are the exception: ``StreamInterrupted`` and
``MapInterrupted`` are KeyboardInterrupts, so that a Run All stops at the cell as it
would at Ctrl-C, and no ``except Exception`` can swallow them.

    TimmyError
    ├── ConfigError ............ providers.yaml is unreadable or invalid (file, provider, field)
    ├── RoutingError ........... no answer could be had; carries the RouteTrace
    │   ├── NoProviderAvailable  every candidate was skipped or failed before its first token
    │   ├── PinnedProviderFailed the pinned provider failed (never a silent fallback)
    │   └── UnknownProvider .... a pin or a command names a provider that is not configured
    ├── InvalidRequest ......... the request itself cannot be sent (also a ValueError); no
    │                            provider is tried, so no breaker counts it
    ├── schema.InvalidAnswer ... an answer does not match the request's schema (a ValueError)
    ├── schema.JSONAnswerError . an answer asked for as JSON is not JSON (a ValueError)
    ├── template.InterpolationError  a ``{name}`` in a prompt cannot be resolved
    ├── ProviderError .......... one backend failed one attempt (mapped once, at the boundary)
    │   ├── ProviderConnectError  could not connect, or the connection dropped (retryable)
    │   │   └── ConnectionRefused nothing accepted the connection (a local server not started)
    │   ├── ProviderTimeout ..... connect / first token / idle / whole request deadline (retryable)
    │   ├── ProviderHTTPError ... the server answered with an error status
    │   │   └── ProviderAuthError 401 / 403: the provider is misconfigured
    │   └── ProviderProtocolError the answer could not be understood (bad JSON, bad SSE, HTML)
    ├── providers.wire.WireError the bytes on the wire break the protocol (mapped to the above)
    ├── servers: LaunchError, NotInstalled  a managed server could not start / is not installed
    ├── cache: CacheSettingError, ReplayMiss  a bad cache setting / no recorded answer in replay
    ├── context.ContextError ... what a cell asked for is not in the kernel
    ├── batch.MapError ......... ``map`` was called wrongly (rows, template, options)
    └── bench.NothingToBench ... every provider named is left out, each for a reason

Every message passes ``TimmyError.__init__``, the one redaction point of exceptions: it is
redacted (``secrets.REDACT``: keys, header values, URL credentials) and holds no lone
surrogate; a ProviderError's message (often a server's own words) is also one line of at
most ``MAX_MESSAGE`` characters.
"""

from __future__ import annotations

from timmy_magic.model.trace import RouteTrace
from timmy_magic.text.markup import shorten

MAX_MESSAGE = 500


def clean_message(message: object) -> str:
    """``message`` as safe text: secrets masked, lone surrogates replaced."""
    from timmy_magic.privacy.redact import REDACT

    text = str(message)
    if not text.isascii():
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return REDACT(text)


class TimmyError(Exception):
    """Base of every error timmy_magic raises on purpose."""

    def __init__(self, message: object = "") -> None:
        super().__init__(clean_message(message))

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback when one reaches a cell (a bad
        ``timmy_magic.map`` call, ``router.complete`` with no provider answering): an
        expected failure is one line, its type and what to do, not our frames."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(TimmyError):
    def __init__(self, message: str, *, file: str | None = None, provider: str | None = None,
                 field: str | None = None) -> None:
        self.file, self.provider, self.field = file, provider, field
        where = [file or "providers.yaml"]
        if provider:
            where.append(f"provider '{provider}'")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}")


class RoutingError(TimmyError):
    def __init__(self, message: str, trace: RouteTrace) -> None:
        self.trace = trace
        super().__init__(message)


class NoProviderAvailable(RoutingError):
    pass


class PinnedProviderFailed(RoutingError):
    pass


class UnknownProvider(TimmyError):
    pass


class InvalidRequest(TimmyError, ValueError):
    """A request no provider could receive (a NaN temperature, text that is not valid
    Unicode): raised before routing, so it can never count against a provider."""


class ProviderError(TimmyError):
    retryable: bool = False
    """Worth trying again; whether it counts against the breaker is the retry policy's
    decision (``routing.retry.RetryPolicy.counts``), from the failure's kind."""

    def __init__(self, message: str, *, provider: str = "", status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.provider, self.status, self.retry_after = provider, status, retry_after
        super().__init__(shorten(str(message), MAX_MESSAGE))


class ProviderConnectError(ProviderError):
    retryable = True


class ConnectionRefused(ProviderConnectError):
    """Nothing accepted the connection: for a local server, it is not started (grey "not
    running", "nothing listening at ..."), which is not the same as one that failed."""


class ProviderTimeout(ProviderError):
    retryable = True


class ProviderHTTPError(ProviderError):
    def __init__(self, message: str, *, provider: str = "", status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider, status=status, retry_after=retry_after)
        code = status or 0
        self.retryable = code in (408, 429) or code >= 500


class ProviderAuthError(ProviderHTTPError):
    pass


class ProviderProtocolError(ProviderError):
    pass
