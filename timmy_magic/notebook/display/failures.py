"""The one readable block shown when a cell got no answer: what failed, the route trace,
what to do. Pure: built from the routing error and a few facts about the router.

Its fields hold plain text (names, messages and traces come from servers and the config);
``markdown()`` escapes each through ``markup``: the title as text, the message and route in
a fenced block they cannot close, the hints as text whose `backticked` parts are code
spans (the commands we suggest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timmy_magic.model.chat import RouteTrace
from timmy_magic.model.errors import PinnedProviderFailed, RoutingError
from timmy_magic.privacy.redact import display_url
from timmy_magic.text.markup import LITERAL_TICK, md, md_code, md_spans, plain


@dataclass(frozen=True)
class ErrorBlock:
    """One readable block: what failed, the route trace, what to do."""

    title: str
    message: str
    trace: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()

    def markdown(self) -> str:
        body = self.message + ("\n\nroute:\n" + "\n".join("  " + t for t in self.trace)
                               if self.trace else "")
        todo = "".join(f"\n- {md_spans(h)}" for h in self.hints)
        return (f"**timmy-magic: {md(self.title)}**\n\n{md_code(body)}"
                + (f"\n\n**What to do:**{todo}" if todo else ""))

    def plain(self) -> str:
        lines = [f"timmy-magic: {self.title}", f"  {self.message}"]
        if self.trace:
            lines += ["  route:"] + [f"    {t}" for t in self.trace]
        if self.hints:
            lines += ["  what to do:"] + [f"    - {h.replace('`', '')}" for h in self.hints]
        # (the backticks of ours go; a value's own, LITERAL_TICK, comes back in plain())
        return plain("\n".join(lines))

    def bundle(self) -> dict[str, str]:
        return {"text/markdown": self.markdown(), "text/plain": self.plain()}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return self.bundle()


def describe_failure(exc: RoutingError, *, pin_source: str | None = None,
                     gate_reason: str = "", config_source: str = "providers.yaml",
                     model: str | None = None, held_back: tuple[str, ...] = ()
                     ) -> ErrorBlock:
    """The block for a request that got no answer. ``pin_source`` says where a pin came
    from: "option" (-p), "default" (TimmyMagics.default_provider) or "session" (%llm pin).
    ``held_back``: what an untrusted providers.yaml asked for and did not get (a
    ``launch:``, a ``${VAR}``): then that is the first thing to say, with the one command
    that fixes it, since keys and servers are not what is missing."""
    trace = exc.trace
    pinned = isinstance(exc, PinnedProviderFailed)
    title = (f"pinned provider '{trace.pinned}' did not answer" if pinned
             else "no provider could answer")
    hints = _hints(trace, pinned, pin_source, gate_reason, config_source, model)
    if held_back:
        source = literal(config_source)
        hints.insert(0, f"`{source}` is not trusted, so it was loaded without "
                        f"{literal(', '.join(held_back))}: if you wrote or checked it, run "
                        f"`%llm trust {source}` (it reloads), and the cell will work.")
    return ErrorBlock(title, str(exc), tuple(trace.lines()), tuple(hints))


def literal(value: object) -> str:
    """A value (a name, a path) to put into a hint. Hints mark code with backticks, so a
    backtick of the value's own becomes ``markup.LITERAL_TICK``: ``md_spans`` and ``plain``
    show it as a backtick that starts or ends nothing."""
    return str(value).replace("`", LITERAL_TICK)


def _hints(trace: RouteTrace, pinned: bool, pin_source: str | None, gate_reason: str,
           config_source: str, model: str | None) -> list[str]:
    gate_reason, config_source = literal(gate_reason), literal(config_source)
    if not trace.considered:
        return [(f"No providers are configured: add some to `{config_source}`, then run "
                 "`%llm reload`.")]
    skipped: dict[str, list[str]] = {}
    for s in trace.skipped:
        if not pinned or s.provider == trace.pinned:
            skipped.setdefault(s.reason, []).append(literal(s.provider))
    hints: list[str] = []
    if "cloud_gate" in skipped:
        fix = (" Turn local-only mode off with `%llm local-only off`."
               if "local-only" in gate_reason else "")
        hints.append(f"The cloud gate is closed ({gate_reason or 'closed'}): "
                     f"{', '.join(skipped['cloud_gate'])} cannot be used now.{fix}")
    if "not_configured" in skipped:
        hints.append(f"Set the API key of {', '.join(skipped['not_configured'])} "
                     "(`%llm status` names the variable), then `%llm reload`.")
    if "no_model" in skipped:
        hints.append(f"No provider serves model '{literal(model)}': check `-m` or "
                     "`TimmyMagics.default_model`.")
    if "no_vision" in skipped:
        hints.append(f"{', '.join(skipped['no_vision'])}: the model cannot see images. Give "
                     "a model with vision `capabilities: [vision]` in providers.yaml (and "
                     "`%llm reload`), pin a provider that has one, or leave the image out "
                     "of `--vars`.")
    if "no_tools" in skipped:
        hints.append(f"{', '.join(skipped['no_tools'])}: the model cannot call tools. Add "
                     "`capabilities: [tools]` to a model that can in providers.yaml (a "
                     "completion-mode model takes them through the prompted protocol), "
                     "then `%llm reload`; or leave `--tools` out.")
    if "completion_model" in skipped:
        hints.append(f"{', '.join(skipped['completion_model'])}: a base model (`mode: "
                     "completion`) continues text; it cannot follow instructions, so it "
                     "is not asked to. Add a chat model to providers.yaml (Ollama with an "
                     "instruct model, any OpenAI-compatible server, or an API key: "
                     "`%llm providers` lists them) and run `%llm reload`.")
    if "context_window" in skipped:
        hints.append(f"{', '.join(skipped['context_window'])}: the request does not fit the "
                     "model's context window. Send less context (`--cells`, `--vars`), "
                     "lower `--max-tokens`, or pin one provider (its context is then cut "
                     "to fit).")
    if "circuit_open" in skipped:
        hints.append(f"{', '.join(skipped['circuit_open'])}: circuit open after repeated "
                     "failures; it is tried again after the recovery timeout.")
    if pinned:
        pin = literal(trace.pinned)
        undo = {"option": f"drop `-p {pin}`", "session": "run `%llm unpin`",
                "default": "`%config TimmyMagics.default_provider = None`"}.get(
                    pin_source or "", "unpin it")
        tried = list(dict.fromkeys(display_url(a.endpoint) for a in trace.attempts
                                   if a.provider == trace.pinned and a.endpoint))
        where = f" at {', '.join(f'`{literal(u)}`' for u in tried)}" if tried else ""
        refused = any(a.provider == trace.pinned and a.refused for a in trace.attempts)
        check = "" if {"cloud_gate", "no_vision", "completion_model"} & skipped.keys() else \
            (f"Nothing is listening{where}: start {pin} there (`%llm status` says how), or "
             if refused else f"Check that {pin} is running{where} (`%llm status`), or ")
        hints.append(f"{check}{undo[0].upper() if not check else undo[0]}{undo[1:]} to let "
                     "the cascade choose.")
    elif trace.attempts or {"unhealthy", "disabled"} & skipped.keys() or not hints:
        hints.append("Start one of the local servers listed by `%llm providers` (or enable "
                     f"one in `{config_source}` and `%llm reload`), then re-run the cell; "
                     "`%llm status` shows what is up.")
    return hints
