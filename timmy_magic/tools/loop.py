"""The tool loop: the model asks for calls, each is checked, approved and run here, the
results go back as ``tool`` messages, and the model is asked again, until it answers
with text or ``max_rounds`` is reached.

``ToolLoop`` holds the state and decides (no I/O of its own: the caller asks the model,
through ``run``/``arun`` or the event forms). The calls run in the caller's thread, one
after another in the order the model gave them: a kernel function runs where the user's
code runs, and an approval read from stdin needs the kernel's main thread.

Nothing a call does ends the loop: a denied call sends ``denied by the user`` back, a
name not offered ``unknown tool``, invalid arguments the validation error, an exception
its type and first line (masked).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, Union

from timmy_magic.model.chat import ChatRequest, Done, Event, Message, Result
from timmy_magic.model.errors import InvalidRequest
from timmy_magic.model.tools import ToolCall, ToolRan, ToolRecord, call_line
from timmy_magic.tools.functions import Tool, ToolArgumentsError, error_text, result_text

DEFAULT_MAX_ROUNDS = 8
DENIED = "denied by the user"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A call about to run, as the approver sees it: the validated arguments and the call
    as one line (``add(a=2, b=3)``)."""

    name: str
    arguments: dict[str, Any]
    round: int

    @property
    def line(self) -> str:
        return call_line(self.name, self.arguments)


Approve = Union[bool, Callable[[PendingCall], bool]]  # noqa: UP007
"""True: every call runs; False: none does (each is denied); a callable decides per call."""


class ToolLoop:
    """One request's tool loop: the conversation so far and every call's record."""

    def __init__(self, request: ChatRequest, tools: Sequence[Any], approve: Approve = True,
                 max_rounds: int = DEFAULT_MAX_ROUNDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_rounds < 1:
            raise InvalidRequest(f"max_tool_rounds must be at least 1, not {max_rounds}")
        made = [Tool.of(t) for t in tools]
        if not made:
            raise InvalidRequest("tools= holds no function")
        self.tools = {t.name: t for t in made}
        if len(self.tools) < len(made):
            raise InvalidRequest("two tools have the same name: "
                                 f"{', '.join(t.name for t in made)}")
        self.request = replace(request, tools=tuple(t.spec for t in made))
        self.approve = approve
        self.max_rounds = max_rounds
        self.records: list[ToolRecord] = []
        self.rounds = 0
        self._clock = clock

    # ------------------------------------------------------------ decisions

    def calls(self, result: Result) -> tuple[ToolCall, ...]:
        """The calls to run after this turn (none: the turn is the answer)."""
        if result.error is not None or not result.calls or self.rounds >= self.max_rounds:
            return ()
        self.rounds += 1
        return result.calls

    def run(self, call: ToolCall) -> ToolRecord:
        """Check, approve and run one call; its record (never raises for what the call
        does: the model gets the error back)."""
        tool = self.tools.get(call.name)
        if tool is None:
            offered = ", ".join(self.tools)
            return self._keep(call, _raw(call), error=f"unknown tool {call.name!r} (the "
                              f"tools are: {offered})")
        try:
            args = tool.validate(call.arguments)
        except ToolArgumentsError as exc:
            return self._keep(call, _raw(call), error=str(exc))
        if not self._approved(PendingCall(call.name, args, self.rounds)):
            return self._keep(call, args, error=DENIED)
        t0 = self._clock()
        try:
            value = tool(args)
        except Exception as exc:  # the user's function: anything  # noqa: BLE001
            return self._keep(call, args, error=error_text(exc), approved=True,
                              took=self._clock() - t0)
        took = self._clock() - t0
        return self._keep(call, args, result=result_text(value), approved=True, took=took)

    def _approved(self, pending: PendingCall) -> bool:
        if isinstance(self.approve, bool):
            return self.approve
        return bool(self.approve(pending))

    def _keep(self, call: ToolCall, args: dict[str, Any], *, result: str | None = None,
              error: str | None = None, approved: bool = False,
              took: float = 0.0) -> ToolRecord:
        record = ToolRecord(call.name, args, result, error, approved, took, self.rounds)
        self.records.append(record)
        return record

    def answered(self, result: Result, records: Sequence[ToolRecord]) -> None:
        """The turn's calls have run: the next request holds them and their results."""
        said = Message("assistant", result.text, tool_calls=result.calls)
        back = tuple(Message("tool", f"error: {r.error}" if r.error is not None
                             else r.result or "",
                             tool_call_id=c.id, name=c.name)
                     for c, r in zip(result.calls, records))
        self.request = replace(self.request,
                               messages=(*self.request.messages, said, *back))

    def final(self, result: Result) -> Result:
        """The last turn's Result with every call, the rounds, and a note when the loop
        stopped at ``max_rounds`` with calls still asked for."""
        notes = result.notes
        if result.calls and result.error is None:
            notes = (*notes, (f"stopped after {self.rounds} tool rounds (max_tool_rounds="
                             f"{self.max_rounds}): the model still asked for "
                             f"{call_line(result.calls[0].name, '…')}; it did not run"))
        return replace(result, tool_calls=tuple(self.records), rounds=self.rounds,
                       notes=notes)

    # ------------------------------------------------------------ drivers

    def run_turns(self, ask: Callable[[ChatRequest], Result]) -> Result:
        """Ask, run the calls, ask again... (synchronous)."""
        while True:
            result = ask(self.request)
            calls = self.calls(result)
            if not calls:
                return self.final(result)
            self.answered(result, [self.run(c) for c in calls])

    async def arun_turns(self, ask: Callable[[ChatRequest], Awaitable[Result]]) -> Result:
        while True:
            result = await ask(self.request)
            calls = self.calls(result)
            if not calls:
                return self.final(result)
            self.answered(result, [self.run(c) for c in calls])

    def _after(self, done: Result) -> Iterator[Event]:
        """A turn's end, for both forms of the loop: its answer (``Done``) when it asks
        for no call, else each call run in order and shown as it ran (``ToolRan``), the
        results kept for the next turn."""
        calls = self.calls(done)
        if not calls:
            yield Done(self.final(done))
            return
        records = []
        for c in calls:
            records.append(self.run(c))
            yield ToolRan(records[-1])
        self.answered(done, records)

    def events(self, stream: Callable[[ChatRequest], Iterator[T]]
               ) -> Iterator[T | Event]:
        """Each turn's events (its ``Done`` held back until it is the answer), a
        ``ToolRan`` after each call, then the final ``Done``."""
        while True:
            done: Result | None = None
            events = stream(self.request)
            try:
                for ev in events:
                    if isinstance(ev, Done):
                        done = ev.result
                    else:
                        yield ev
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
            if done is None:  # pragma: no cover - every stream ends with Done or raises
                raise AssertionError("a turn's stream ended without Done")
            finished = False
            for out in self._after(done):
                finished = isinstance(out, Done)
                yield out
            if finished:
                return

    async def aevents(self, stream: Callable[[ChatRequest], AsyncIterator[Event]]
                      ) -> AsyncIterator[Event]:
        while True:
            done: Result | None = None
            async for ev in stream(self.request):
                if isinstance(ev, Done):
                    done = ev.result
                else:
                    yield ev
            if done is None:  # pragma: no cover
                raise AssertionError("a turn's stream ended without Done")
            finished = False
            for out in self._after(done):
                finished = isinstance(out, Done)
                yield out
            if finished:
                return


def _raw(call: ToolCall) -> dict[str, Any]:
    """The arguments as the model sent them (for the record of a call that did not run)."""
    try:
        value = call.parsed()
    except ValueError:
        return {"(not JSON)": call.arguments[:200]}
    return value if isinstance(value, dict) else {"(not an object)": value}
