"""Managed local servers (``launch:`` in providers.yaml): start or adopt on first need,
with progress as ``Status`` events, and stop on request. The process work itself is in
``launch.py``; this module ties it to the router's endpoints and health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from timmy_magic.model.chat import Status
from timmy_magic.model.errors import UnknownProvider
from timmy_magic.routing.endpoints import Endpoint, ProviderState
from timmy_magic.routing.state import Core


async def launch(core: Core, st: ProviderState, ep: Endpoint) -> AsyncIterator[Status]:
    """Start (or adopt) the managed server behind ``ep``, yielding progress. Interrupted,
    it waits for the launcher's own clean-up (which stops a half-started process)."""
    launcher = ep.launcher
    assert launcher is not None
    launcher.last_used = time.monotonic()
    if (launcher.running() or launcher.state == "adopted") and ep.probe is not None \
            and ep.probe.state == "healthy":
        return  # the fast path: no I/O per request

    async def healthy() -> bool:
        probe = await core.backend(st, ep).probe(core.timeouts.health)
        ep.probe, ep.checked_at = probe, core.clock()
        return probe.state == "healthy"

    notes: asyncio.Queue[str] = asyncio.Queue()

    def progress(msg: str) -> None:
        notes.put_nowait(msg)
        core.notify("health")

    task = asyncio.ensure_future(launcher.ensure(healthy, progress))
    try:
        while not task.done() or not notes.empty():
            if notes.empty():
                getter = asyncio.ensure_future(notes.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                yield Status(st.name, getter.result())
            else:
                yield Status(st.name, notes.get_nowait())
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    task.result()
    core.notify("health")


def managed(core: Core, name: str) -> ProviderState:
    st = core.provider(name)
    if not any(ep.launcher for ep in st.endpoints):
        raise UnknownProvider(f"provider '{name}' has no `launch:` section")
    return st


async def start(core: Core, name: str) -> list[str]:
    """Start (or adopt) the managed servers of provider ``name``; their progress."""
    st = managed(core, name)
    notes = []
    for ep in st.endpoints:
        if ep.launcher is not None:
            core.backend(st, ep)
            async for s in launch(core, st, ep):
                notes.append(s.message)
    return notes


async def stop(core: Core, name: str) -> bool:
    """Stop the servers of ``name`` that we started (adopted ones are left running); they
    stay out of the cascade until started again or pinned."""
    st = core.provider(name)
    stopped = False
    for ep in st.endpoints:
        if ep.launcher is not None and await ep.launcher.astop():
            ep.launcher.held = True
            ep.probe = None
            stopped = True
    core.notify("health")
    return stopped
