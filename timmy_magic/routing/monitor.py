"""Health: probe providers concurrently under one deadline, keep probing in the
background, and stop managed servers that have been idle too long.

A provider that is down is never dropped: it is probed again on the next pass. A probe that
times out while the endpoint is streaming answers marks it degraded (busy), not down: the
breaker judges the requests themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

from timmy_magic.model.chat import HealthReport
from timmy_magic.model.errors import ConnectionRefused
from timmy_magic.providers.base import Probe, map_error
from timmy_magic.routing.endpoints import Endpoint, ProviderState
from timmy_magic.routing.state import Core, log
from timmy_magic.servers.launch import Launcher
from timmy_magic.text.markup import count


class Monitor:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._loop_task: concurrent.futures.Future[None] | None = None

    async def check(self, names: list[str] | None = None) -> dict[str, HealthReport]:
        """Probe the given providers (default: every enabled or pinned one) concurrently,
        all under one deadline of ``health_timeout_seconds``. Runs on the loop."""
        core = self.core
        timeout = core.config.cascade.health_timeout_seconds
        targets = [core.providers[n] for n in (names or core.providers) if n in core.providers]
        targets = [st for st in targets if names or st.cfg.enabled or st.name == core.pinned]
        targets = [st for st in targets if not (st.cfg.kind.needs_key and not st.cfg.key())]
        for st in targets:
            st.checking = True
        core.notify("health")
        try:
            await asyncio.gather(*(self._probe(st, ep, timeout)
                                   for st in targets for ep in st.endpoints))
        finally:  # an interrupted check must not leave badges on "checking"
            for st in targets:
                st.checking = False
                if st.misconfigured and all(ep.probe and ep.probe.state == "healthy"
                                            for ep in st.endpoints):
                    st.misconfigured = None
            core.notify("health")
        return {st.name: core.report(st) for st in targets}

    async def _probe(self, st: ProviderState, ep: Endpoint, timeout: float) -> None:
        try:
            probe = await asyncio.wait_for(self.core.backend(st, ep).probe(timeout),
                                           timeout + 0.25)
        except TimeoutError:
            probe = Probe("down", error=f"health check timed out after {timeout:g}s")
        except Exception as exc:  # noqa: BLE001
            err = map_error(exc, st.name)
            probe = Probe("down", error=str(err), refused=isinstance(err, ConnectionRefused))
        if probe.state == "down" and ep.outstanding and "timed out" in (probe.error or ""):
            probe = Probe("degraded", probe.latency_s, probe.models, probe.detail,
                          f"{probe.error} while serving {count(ep.outstanding, 'request')}")
        ep.probe, ep.checked_at = probe, self.core.clock()
        ep.answered = ep.answered or probe.state != "down"
        if probe.windows and any(st.windows.get(m) != n for m, n in probe.windows.items()):
            st.windows = {**st.windows, **probe.windows}  # rebound: read from other threads
        if probe.capabilities and any(st.reported.get(m) != c
                                      for m, c in probe.capabilities.items()):
            st.reported = {**st.reported, **probe.capabilities}

    def start(self, interval: float | None = None) -> None:
        """Probe everything now and then every ``health_interval_seconds``."""
        if self._loop_task is not None and not self._loop_task.done():
            return
        every = interval or self.core.config.cascade.health_interval_seconds

        async def loop() -> None:
            next_pass = 0.0
            while True:
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + every
                    try:
                        await self.check()
                    except Exception:  # noqa: BLE001
                        log.exception("health pass failed")
                await self._reap_idle()
                await asyncio.sleep(min(every, 1.0))

        self._loop_task = self.core.runner.submit(loop())

    def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def _reap_idle(self) -> None:
        """Stop managed servers idle longer than their ``idle_timeout`` (under the
        launcher's lock, idleness checked again there; the waiting in a thread)."""
        for st in list(self.core.providers.values()):
            for ep in st.endpoints:
                lc = ep.launcher
                if lc is None or lc.cfg.idle_timeout is None or lc.state != "running" \
                        or not lc.running():
                    continue
                limit = lc.cfg.idle_timeout

                def idle(lc: Launcher = lc, ep: Endpoint = ep, limit: float = limit) -> bool:
                    return lc.idle_for() > limit and ep.outstanding == 0

                if idle() and await lc.astop(only_if=idle):
                    lc.message = f"stopped after {lc.cfg.idle_timeout:g}s idle"
                    ep.probe = None  # (a probe read while it went must not say healthy)
                    self.core.notify("health")
