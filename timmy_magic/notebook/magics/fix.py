"""``%llm fix`` and ``%llm explain``: the last error, with what its cell named, to a model
that follows instructions (``ChatRequest.instruct``: a base model is skipped, with the
reason). With only base models configured, fix asks one to continue code instead; what
comes back becomes a cell only through ``Session.propose_cell`` (it parses, it changes the
failing cell, it no longer uses the missing name)."""

from __future__ import annotations

import dataclasses
import shlex
from typing import TYPE_CHECKING, Literal

from IPython.core.error import UsageError

from timmy_magic.context import (
    COMPLETION_FIX_HEAD,
    Context,
    ContextError,
    ErrorItem,
    completion_fix_start,
    error_context,
    missing_name,
    split_fix,
)
from timmy_magic.model.chat import ChatRequest, Message, Result

if TYPE_CHECKING:
    from timmy_magic.notebook.cell import TimmyMagics as Extension
    from timmy_magic.notebook.session import CellOptions

BASE_MODEL_FIX = ("asked as code to continue: the only models configured are base models "
                  "(mode: completion), which do not follow instructions; a chat model in "
                  "providers.yaml gives better fixes")
_CONTINUATION_ENDS = ("```", "In [", COMPLETION_FIX_HEAD, "# Failing cell", "# Fixed cell",
                      "# Close names")


def fix(ext: Extension, options: list[str]) -> None:
    """The failing cell and its traceback go to the model, which answers one line of
    explanation and the corrected cell; the cell is proposed below (as -f code)."""
    opts = _options(ext, options, "fix")
    ctx = _context(ext, "fix")
    error = next((i for i in ctx.items if isinstance(i, ErrorItem)), None)
    failing = error.cell_source if error else None
    missing = missing_name(error.type, error.message) if error else None
    if _only_base_models(ext, opts):
        # no model here follows instructions: ask the base model to continue code
        ctx = _context(ext, "fix", completion=True)
        opts = dataclasses.replace(opts, fmt="text")
        start = completion_fix_start(ctx)

        def continued(result: Result) -> tuple[str, ...]:
            more = _first_block(result.text)
            code = start + more if _has_code(more) else ""  # comments are no fix
            notes = ext.session.propose_cell(code, "fix proposed in a new cell below",
                                             unchanged=failing, missing=missing)
            return (*notes, BASE_MODEL_FIX)

        ext.session.ask(ctx, opts, f"fix:{id(ctx)}", "%llm fix", then=continued)
        return

    def propose(result: Result) -> tuple[str, ...]:
        explanation, code = split_fix(result.text)
        if code is None:
            return ("the answer holds no code block: no cell was inserted",)
        return ext.session.propose_cell(
            code, f"fix proposed in a new cell below: {explanation or 'see above'}",
            unchanged=failing, missing=missing)

    ext.session.ask(ctx, opts, f"fix:{id(ctx)}", "%llm fix", then=propose)


def explain(ext: Extension, options: list[str]) -> None:
    ctx = _context(ext, "explain")
    ext.session.ask(ctx, _options(ext, options, "explain"), f"explain:{id(ctx)}",
                    "%llm explain")


def _only_base_models(ext: Extension, opts: CellOptions) -> bool:
    """No provider this fix could go to follows instructions, and one base model
    (``mode: completion``) could take it: then it is asked as code to continue."""
    router = ext.router
    probe = ChatRequest((Message("user", "fix"),), opts.model, provider=opts.provider,
                        instruct=True)
    plan = router.plan(opts.provider or router.pinned, opts.model, probe)
    return not plan.order and bool(plan.skipped_for("completion_model"))


def _options(ext: Extension, options: list[str], command: str) -> CellOptions:
    opts, _ = ext.options(shlex.join(options))
    if opts.chat or opts.cells or opts.names or opts.error or opts.fmt != "markdown":
        raise UsageError(f"%llm {command}: --chat, --cells, --vars, --error and -f do not "
                         "apply (the last error is the context)")
    if opts.background:
        raise UsageError(f"%llm {command}: --bg does not apply (its answer acts on the "
                         "cell you are in: run it in the foreground)")
    return opts


def _context(ext: Extension, command: Literal["fix", "explain"],
             completion: bool = False) -> Context:
    try:
        return error_context(ext.ip, command, completion=completion)
    except ContextError as exc:
        raise UsageError(str(exc)) from None


def _first_block(text: str) -> str:
    """A base model's continuation up to where it stops writing the cell: a blank line,
    a fence, or a line that starts the prompt's layout again."""
    lines: list[str] = []
    for line in text.strip("\n").splitlines():
        if not line.strip() or line.startswith(_CONTINUATION_ENDS):
            break
        lines.append(line)
    return "\n".join(lines)


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#")
               for line in text.splitlines())
