"""The model sees the notebook: earlier cells, kernel variables, the last error and images
as context for a prompt, cut to a token budget, with secrets masked.

Pure and kernel-side: it reads the shell (history, namespace, the last exception) and
returns values; it sends nothing and displays nothing. The magic wires it up::

    ctx = build_context(shell, prompt, cells="3", names=["df"], error=True,
                        system=system, extra_secrets=())
    ctx = ctx.fit(window - max_tokens)       # oldest cells dropped first, then values cut
    ctx.render_markdown()                    # --show-context
    request = ChatRequest(messages=ctx.as_messages(), ...)
    ctx.note()                               # "context: 3 cells, 1 var, ~1.2k tokens ..."

Modules: ``items`` (the items), ``kernel`` (reading the shell), ``summaries`` (values);
secrets are masked by ``privacy.masking``, tokens estimated by ``model.tokens``. This one
is the API: ``Context``, ``build_context``, the fix/explain prompts, and the others'
public names re-exported.

Decisions, so the wiring need not make them:

- **Tokens** are estimated by ``model.tokens``: 4 characters a token
  (``CHARS_PER_TOKEN``), an image at ``width × height / 750`` capped at 1,600, 1,000 when
  its size is unknown.
- **Cells**: ``"N"`` is the previous N code cells before the running one; ``"A:B"`` the
  execution counts A to B *inclusive* (as ``%history A-B``), ``"A:"`` from A on, ``":B"``
  up to B. Only the current session. ``%%llm`` / ``%llm`` cells and empty cells are left
  out (they are prompts, not the user's code; ``include_llm=True`` keeps them). A cell's
  output is its ``Out[n]`` as IPython displayed it (text/plain); what a cell *printed* is
  not kept by IPython, so it is not available.
- **Errors**: the exception IPython last showed (``sys.last_exc`` / ``sys.last_value``).
  The failing cell is the outermost cell frame of the traceback (the cell that was run), or
  the cell a SyntaxError names. Frames are user code only: cells and files outside the
  interpreter's prefix, site-packages and timmy_magic; library frames are counted, not shown.
- **Secrets**: everything in a Context (prompt, system prompt, every item) is masked with
  ``***``: values registered with ``secrets.REDACT`` (every configured key and header),
  values of environment variables whose names look secret, ``extra_secrets``, and what
  plainly is a credential (``sk-...``, ``Bearer ...``, a URL password). ``name=value``
  patterns are *not* masked here: in code they are arguments (``api_key=key``), not
  secrets. An image is sent as it is: pixels cannot be masked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from timmy_magic.context.items import (
    CellItem,
    ContextError,
    ContextItem,
    ErrorItem,
    Frame,
    ImageItem,
    Kind,
    VarItem,
    cut_middle,
)
from timmy_magic.context.kernel import (
    cells_from_history,
    image_item,
    is_llm_cell,
    last_error,
    parse_cells_spec,
    running_cell,
    var_items,
)
from timmy_magic.context.referenced import close_names, missing_name, referenced_names
from timmy_magic.context.summaries import DEFAULT_MAX_CHARS, summarize
from timmy_magic.model.chat import Message
from timmy_magic.model.framing import INTRO as INTRO
from timmy_magic.model.framing import with_context
from timmy_magic.model.tokens import CHARS_PER_TOKEN, estimate_tokens
from timmy_magic.privacy.masking import Masker, mask_item, mask_secrets, secret_env_values
from timmy_magic.text.formats import fenced_block
from timmy_magic.text.markup import count, md, md_code, short_count

__all__ = [
    "COMPLETION_FIX_HEAD",
    "CellItem",
    "Context",
    "ContextError",
    "ContextItem",
    "ErrorItem",
    "Frame",
    "ImageItem",
    "Kind",
    "Masker",
    "VarItem",
    "build_context",
    "cells_from_history",
    "completion_fix_start",
    "cut_middle",
    "error_context",
    "explain_request",
    "fix_request",
    "image_item",
    "is_llm_cell",
    "last_error",
    "mask_item",
    "mask_secrets",
    "masked_context",
    "missing_name",
    "parse_cells_spec",
    "running_cell",
    "secret_env_values",
    "split_fix",
    "summarize",
    "var_items",
]

MIN_CUT_CHARS = 200
"""A value is never shortened below this: dropping it is then more honest."""
_ORDER: dict[str, int] = {"cell": 0, "var": 1, "error": 2, "image": 3}


@dataclass(frozen=True)
class Context:
    """A prompt with its context items: what would be sent, and what was cut."""

    prompt: str
    items: tuple[ContextItem, ...] = ()
    system: str | None = None
    dropped: tuple[ContextItem, ...] = ()
    masked: int = 0
    budget: int | None = None
    instruct: bool = False
    """An assistant's task (fix, explain): only a model that follows instructions can do
    it (``ChatRequest.instruct``)."""

    # -- what is sent

    def prompt_text(self, *, vision: bool = False) -> str:
        """The user message: the context blocks, then the prompt. Images show as their
        description (with ``vision`` they go as image parts too, see ``user_parts``)."""
        if not self.items:
            return self.prompt
        return with_context([self._block(i, vision) for i in self.items], self.prompt)

    def _block(self, item: ContextItem, vision: bool) -> str:
        if isinstance(item, ImageItem) and not vision:
            return f"### {item.heading}\n(an image; this model cannot see it: {item.text})"
        return item.block()

    def as_messages(self) -> tuple[Message, ...]:
        """System (if any) and user messages, text only: ready for ``ChatRequest``."""
        system = (Message("system", self.system),) if self.system else ()
        return (*system, Message("user", self.prompt_text()))

    def user_parts(self) -> list[dict[str, Any]]:
        """The user message as OpenAI-style content parts: the text, then each image as
        an ``image_url`` part with a data URL (for providers with ``vision``)."""
        parts: list[dict[str, Any]] = [{"type": "text", "text": self.prompt_text(vision=True)}]
        parts += [{"type": "image_url", "image_url": {"url": i.data_url()}}
                  for i in self.images]
        return parts

    @property
    def images(self) -> tuple[ImageItem, ...]:
        return tuple(i for i in self.items if isinstance(i, ImageItem))

    @property
    def needs_vision(self) -> bool:
        return bool(self.images)

    # -- sizes

    @property
    def context_tokens(self) -> int:
        """Estimated tokens of the context alone (the items)."""
        return sum(i.tokens for i in self.items)

    def total_tokens(self, *, vision: bool = False) -> int:
        """Estimated tokens of everything sent: system, prompt, context, images."""
        text = estimate_tokens(self.prompt_text(vision=vision)) + (
            estimate_tokens(self.system) if self.system else 0)
        return text + (sum(i.tokens for i in self.images) if vision else 0)

    def fit(self, budget_tokens: int, *, vision: bool = False) -> Context:
        """A Context whose ``total_tokens`` fits ``budget_tokens`` (the window less
        ``max_tokens``): oldest cells dropped first, then long values shortened (evenly,
        never below ``MIN_CUT_CHARS``), then images, then the largest items dropped. The
        prompt and system prompt are never cut."""
        ctx = dataclasses.replace(self, budget=budget_tokens)
        while ctx._over(vision) and any(i.kind == "cell" for i in ctx.items):
            ctx = ctx._drop(next(i for i in ctx.items if i.kind == "cell"))
        if ctx._over(vision):
            ctx = ctx._shorten_values(budget_tokens, vision)
        while ctx._over(vision) and ctx.images:
            ctx = ctx._drop(ctx.images[0])
        while ctx._over(vision) and ctx.items:
            ctx = ctx._drop(max(ctx.items, key=lambda i: i.tokens))
        return ctx

    def _over(self, vision: bool) -> bool:
        return self.budget is not None and self.total_tokens(vision=vision) > self.budget

    def _drop(self, item: ContextItem) -> Context:
        items = tuple(i for i in self.items if i is not item)
        return dataclasses.replace(self, items=items,
                                   dropped=(*self.dropped, dataclasses.replace(item, cut=True)))

    def _shorten_values(self, budget: int, vision: bool) -> Context:
        """Water-filling: the text items share what the budget leaves; those under their
        share keep everything, the others are cut to it."""
        bare = dataclasses.replace(self, items=tuple(
            i.shortened(0) if not isinstance(i, ImageItem) else i for i in self.items))
        spare = (budget - bare.total_tokens(vision=vision)) * CHARS_PER_TOKEN
        texts = sorted((i for i in self.items if not isinstance(i, ImageItem)),
                       key=lambda i: i.characters)
        limits: dict[int, int] = {}
        for k, item in enumerate(texts):
            share = max(0, spare) // (len(texts) - k)
            limits[id(item)] = max(MIN_CUT_CHARS, share)
            spare -= min(item.characters, share)
        return dataclasses.replace(self, items=tuple(
            i.shortened(limits[id(i)]) if id(i) in limits else i for i in self.items))

    # -- what is shown

    def counts(self) -> dict[str, int]:
        return _count_kinds(self.items)

    def note(self) -> str:
        """``context: 3 cells, 2 vars, ~1.2k tokens (cut: 1 cell; 2 secrets masked)``;
        empty when there is no context and nothing was masked."""
        if not self.items and not self.dropped and not self.masked:
            return ""
        if not self.items and not self.dropped:
            return f"{count(self.masked, 'secret')} masked in the prompt"
        parts = [count(n, kind) for kind, n in _sorted_counts(self.counts())]
        head = "context: " + ", ".join(parts + [f"~{short_count(self.context_tokens)} tokens"])
        extra = []
        cut = _sorted_counts(_count_kinds([*self.dropped, *(i for i in self.items if i.cut)]))
        if cut:
            extra.append("cut: " + ", ".join(count(n, k) for k, n in cut))
        if self.masked:
            extra.append(f"{count(self.masked, 'secret')} masked")
        return head + (f" ({'; '.join(extra)})" if extra else "")

    def rows(self) -> list[dict[str, Any]]:
        """Each item sent, then each dropped: for ``Result.context``."""
        return [i.row() for i in self.items] + [i.row(dropped=True) for i in self.dropped]

    def render_markdown(self) -> str:
        """For ``--show-context``: the note, a table of the items, and the exact text."""
        lines = [f"**{md(self.note() or 'no context')}**", "",
                 "| kind | name | characters | ~tokens | |", "| --- | --- | ---: | ---: | --- |"]
        for row in self.rows():
            status = "dropped" if row["dropped"] else ("shortened" if row["cut"] else "")
            lines.append(f"| {row['kind']} | {md(row['name']).replace('|', '&#124;')} | "
                         f"{row['characters']:,} | {row['tokens']:,} | {status} |")
        if self.budget is not None:
            lines += ["", md(f"Budget: {self.budget:,} tokens; this request: "
                             f"~{self.total_tokens():,}.")]
        if self.system:
            lines += ["", "System prompt:", "", md_code(self.system)]
        lines += ["", "User message:", "", md_code(self.prompt_text(), "markdown")]
        return "\n".join(lines)


def _count_kinds(items: Iterable[ContextItem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item.kind] = out.get(item.kind, 0) + 1
    return out


def _sorted_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], 9))


def build_context(shell: Any, prompt: str, *, cells: str | int | None = None,
                  names: Iterable[str] = (), error: bool = False, system: str | None = None,
                  extra_secrets: Sequence[str] = (), include_llm: bool = False,
                  max_value_chars: int = DEFAULT_MAX_CHARS,
                  environ: Mapping[str, str] | None = None) -> Context:
    """Everything ``%%llm --cells/--vars/--error`` asks for, masked, in prompt order:
    cells (oldest first), variables, the error, images. One ``Masker`` sees every raw
    value before it is summarised or cut. ContextError when a name is unknown or
    ``error`` is set and there was none."""
    masker = Masker(extra_secrets, environ=environ)
    items: list[ContextItem] = []
    if cells is not None:
        items += cells_from_history(shell, cells, include_llm=include_llm, masker=masker)
    items += var_items(shell, names, max_chars=max_value_chars, masker=masker)
    if error:
        err = last_error(shell, masker)
        if err is None:
            raise ContextError("--error: no exception has been raised in this kernel yet")
        items.append(err)
    items.sort(key=lambda i: _ORDER[i.kind])
    return _masked(Context(prompt=prompt, items=tuple(items), system=system), masker)


def masked_context(ctx: Context, extra_secrets: Sequence[str] = (), *,
                   environ: Mapping[str, str] | None = None) -> Context:
    """``ctx`` with prompt, system prompt and every item masked; ``masked`` counts."""
    return _masked(ctx, Masker(extra_secrets, environ=environ))


def _masked(ctx: Context, masker: Masker) -> Context:
    items = tuple(masker.value(i) for i in ctx.items)
    prompt = masker.text(ctx.prompt)
    system = masker.text(ctx.system) if ctx.system else ctx.system
    return dataclasses.replace(ctx, prompt=prompt, system=system, items=items,
                               masked=ctx.masked + masker.count)


# ---------------------------------------------------------------- fix and explain

FIX_SYSTEM = (
    "You fix Python code in Jupyter notebook cells. Reply with exactly one line that "
    "explains the fix, then the corrected cell, complete (not a diff, not only the changed "
    "lines), in a single ```python code block. Nothing after the code block.")
EXPLAIN_SYSTEM = (
    "You explain Python errors in Jupyter notebooks to the person who hit them. Say what "
    "went wrong and why, in plain words, pointing at the line in their cell, and how they "
    "could fix it. Be brief. Do not write out a corrected cell.")


COMPLETION_FIX_HEAD = "# A Jupyter notebook cell that failed, then the same cell fixed."
"""The first line of a fix asked of a base model as code to continue (no instructions)."""
COMPLETION_FIX_TAIL = "# Fixed cell:\n"


def _ask(error: ErrorItem, mode: Literal["fix", "explain"], close: Sequence[str] = ()) -> str:
    where = f"In[{error.cell_number}]" if error.cell_number is not None else "that failed"
    hint = f" Names close to the missing one: {', '.join(close)}." if close else ""
    if mode == "fix":
        return f"Fix the cell {where} (the last error above).{hint}"
    return f"Explain this error: {error.type} in the cell {where} (above).{hint}"


def _error_request(error: ErrorItem, mode: Literal["fix", "explain"],
                   cell_source: str | None, masker: Masker,
                   values: Sequence[ContextItem] = (), close: Sequence[str] = ()) -> Context:
    if cell_source is not None and cell_source != error.cell_source:
        error = error.with_source(cell_source)
    system = FIX_SYSTEM if mode == "fix" else EXPLAIN_SYSTEM
    return _masked(Context(prompt=_ask(error, mode, close), items=(*values, error),
                           system=system, instruct=True), masker)


def _completion_fix(error: ErrorItem, masker: Masker, values: Sequence[ContextItem],
                    close: Sequence[str], missing: str | None) -> Context:
    """``%llm fix`` for a base model: no instructions, a page of code for it to continue
    (the values as comments, the failing cell and its error, then ``# Fixed cell:`` and
    the cell up to the missing name, so the model writes the fix where it belongs); the
    answer, after that start (``completion_fix_start``), is the rest of the cell."""
    lines = [COMPLETION_FIX_HEAD]
    for v in values:
        summary = v.text.splitlines()
        lines += [f"# {v.name}: {summary[0] if summary else ''}",
                  *(f"#   {s}" for s in summary[1:8])]
    lines += ["# Failing cell:", error.cell_source or "",
              f"# {error.type}: {error.message.splitlines()[0] if error.message else ''}"]
    if close:
        lines.append(f"# Close names: {', '.join(close)}")
    source = error.cell_source or ""
    start = source[:source.index(missing)] if missing and close and missing in source else ""
    return _masked(Context(prompt="\n".join(lines) + "\n" + COMPLETION_FIX_TAIL + start),
                   masker)


def completion_fix_start(ctx: Context) -> str:
    """The start of the fixed cell a base-model fix prompt ends with (the answer goes on
    from there)."""
    return ctx.prompt.rpartition(COMPLETION_FIX_TAIL)[2]


def fix_request(error: ErrorItem, cell_source: str | None = None, *,
                extra_secrets: Sequence[str] = ()) -> tuple[str, str]:
    """(system, user) asking for the corrected complete cell in one ```python block,
    with a one-line explanation before it. Masked."""
    ctx = _error_request(error, "fix", cell_source, Masker(extra_secrets))
    return FIX_SYSTEM, ctx.prompt_text()


def explain_request(error: ErrorItem, cell_source: str | None = None, *,
                    extra_secrets: Sequence[str] = ()) -> tuple[str, str]:
    """(system, user) asking to explain the error, no code. Masked."""
    ctx = _error_request(error, "explain", cell_source, Masker(extra_secrets))
    return EXPLAIN_SYSTEM, ctx.prompt_text()


def error_context(shell: Any, mode: Literal["fix", "explain"], *,
                  extra_secrets: Sequence[str] = (), completion: bool = False) -> Context:
    """``%llm fix`` / ``%llm explain`` as a Context: the error (its failing cell and
    traceback), the values the cell names (``referenced``), and in the prompt the names
    close to a missing one. Fitted to the window as ``%%llm --error`` is (values cut or
    dropped first, then a long message). ``completion``: the fix as code for a base model
    to continue (``_completion_fix``). ContextError when there is no error."""
    masker = Masker(extra_secrets)
    err = last_error(shell, masker)
    if err is None:
        raise ContextError(f"%llm {mode}: no exception has been raised in this kernel yet")
    ns = getattr(shell, "user_ns", {})
    names = referenced_names(err.cell_source or "", ns)
    try:
        values: list[ContextItem] = [v for v in var_items(shell, names, max_chars=1200,
                                                          masker=masker)
                                     if v.kind == "var"]
    except ContextError:  # a value that cannot be read: the error alone still helps
        values = []
    missing = missing_name(err.type, err.message)
    close = close_names(missing, ns, names) if missing else []
    if completion:
        return _completion_fix(err, masker, values, close, missing)
    return _error_request(err, mode, None, masker, values, close)


def split_fix(answer: str) -> tuple[str, str | None]:
    """A fix answer as (the explanation before the code block, the code) ; code is None
    when the answer holds no fenced block."""
    code = fenced_block(answer, "python")
    if code is None:
        code = fenced_block(answer)
    if code is None:
        return answer.strip(), None
    start = re.search(r"^[ \t]*(`{3,}|~{3,})", answer, re.MULTILINE)
    explanation = answer[: start.start()].strip() if start else ""
    return explanation, code
