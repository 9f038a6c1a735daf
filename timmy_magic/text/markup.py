"""The one way text we did not write reaches a Markdown or HTML output.

Provider names, model ids and the ``model`` a server sends, error messages, config paths,
URLs, notes and the prompts in the history are data: shown as text, never as markup. Each
function here makes the text displayable first (``clean``: a lone surrogate cannot be sent
in a Jupyter message, so it and control characters become U+FFFD, ``\\r\\n`` becomes
``\\n``), then passes it through ``secrets.REDACT`` (a key must not show even when a server
echoes it), then escapes it for where it goes:

- ``md(text)``: one line of inline Markdown (a table cell, a footer, a title, a note, a
  list item). Markdown and HTML specials become backslash escapes or entities, a leading
  ``#``, ``-``, ``+``, ``=`` or ``1.`` cannot start a block, newlines become spaces.
- ``md_spans(text)``: the same for text of ours with `code` spans in backticks (the
  hints): the spans stay code, the rest is escaped as by ``md``.
- ``md_code(text, lang)``: a fenced block (``fence``) that the text cannot close.
- ``html(text)`` for element content, ``html_attr(text)`` for an attribute value.
- ``plain(text)``: text/plain (cleaned and redacted, nothing to escape).

The owners of the small guarantees text needs before it goes anywhere (these take the
text as it is; clean and escape the result as above): ``shorten`` (one line, at most n
characters, "…" when cut), ``fence`` (a backtick fence nothing inside can close: the
prompt's context blocks and ``md_code``), ``count`` ("1 cell", "3 cells") and
``short_count`` ("1.2k").

Math. Jupyter front ends typeset ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` and
``\\begin{env}`` in Markdown *and* HTML outputs: JupyterLab first hides math from its
Markdown parser (``removeMath`` in @jupyterlab/rendermime), then runs MathJax over the
rendered DOM. A backslash escape does not survive that (the Markdown parser turns ``\\$``
into ``$`` before MathJax looks: jupyterlab/jupyterlab#8645), so text holding ``$`` or ``\\``
is written with entities (``&#36;``, ``&#92;``: invisible to ``removeMath``) inside a span
that MathJax skips (``tex2jax_ignore``: MathJax 2, classic Notebook; ``mathjax_ignore``:
MathJax 3, JupyterLab 4, Notebook 7). Elsewhere (GitHub, VS Code) the span is plain inline
HTML and the text reads the same.
"""

from __future__ import annotations

import html as _html
import re

from timmy_magic.privacy.redact import REDACT

LITERAL_TICK = "\ue000"
"""A backtick of a value put into text of ours with `code` spans (``md_spans``): shown as a
backtick, never read as the start or end of a span (``failures.literal`` makes these)."""
NOMATH = '<span class="tex2jax_ignore mathjax_ignore">'
"""Opens the span around text holding ``$`` or ``\\``: MathJax 2 and 3 skip its content."""
_NOMATH_END = "</span>"

# C0/C1 controls (but tab and newline), lone surrogates, and bidirectional overrides
# (which can make a name read as something else: "Trojan Source").
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MATH_CHARS = re.compile(r"[$\\]")
_MD_ESCAPES = str.maketrans({
    "\\": "&#92;", "$": "&#36;",  # entities: see "Math" above
    "&": "&amp;", "<": "&lt;", ">": "&gt;",  # no HTML, no entity of the text's own
    "`": "\\`", LITERAL_TICK: "\\`", "*": "\\*", "_": "\\_", "~": "\\~", "[": "\\[", "]": "\\]",
    "|": "\\|",  # a table cell; GFM splits rows before it parses inline Markdown
})
_BLOCK_START = re.compile(r"[#+=-]|\d{1,9}[.)]")  # heading, list, setext, ordered list


def clean(text: object) -> str:
    """``text`` as a string any Jupyter message can carry, with secrets masked."""
    s = text if isinstance(text, str) else str(text)
    if _SURROGATE.search(s):  # join the pairs, replace the lone ones
        s = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    s = _UNSHOWABLE.sub("\ufffd", s.replace("\r\n", "\n").replace("\r", "\n"))
    return REDACT(s)


def plain(text: object) -> str:
    """For text/plain: cleaned and redacted."""
    return clean(text).replace(LITERAL_TICK, "`")


def _one_line(text: str) -> str:
    return " ".join(text.split())


WORD_CUT_SHARE = 0.6
"""A cut goes back to the last space when that keeps at least this share of the room:
"... or set…", not "... or se…"; a long unbroken token (a URL, a path) is cut inside."""


def shorten(text: str, limit: int) -> str:
    """``text`` on one line (runs of whitespace as one space), at most ``limit``
    characters, ending in "…" when cut, at a word boundary where there is one near the
    end (``WORD_CUT_SHARE``). Nothing escaped or masked: for that, pass the result to
    ``md``/``plain`` (cut first, so an escape is never cut in half)."""
    flat = _one_line(text)
    if len(flat) <= limit:
        return flat
    room = max(limit - 1, 0)
    head = flat[:room]
    space = head.rfind(" ")
    if flat[room:room + 1] != " " and space >= WORD_CUT_SHARE * room:
        head = head[:space]
    return head.rstrip() + "…"


def _inline(text: str) -> str:
    """Escape clean text for inline Markdown (no line-start rules, no math span)."""
    return text.translate(_MD_ESCAPES)


def _line_start(escaped: str) -> str:
    """Keep the first characters of a line from starting a block (heading, list item,
    setext underline, ordered list item)."""
    m = _BLOCK_START.match(escaped)
    if m is None:
        return escaped
    at = m.end() - 1  # the marker character: "#", "-", ..., or the "." of "1."
    return escaped[:at] + "\\" + escaped[at:]


def _nomath(escaped: str, raw: str) -> str:
    return f"{NOMATH}{escaped}{_NOMATH_END}" if _MATH_CHARS.search(raw) else escaped


def md(text: object) -> str:
    """``text`` as one line of inline Markdown that renders as exactly that text."""
    raw = _one_line(clean(text))
    return _nomath(_line_start(_inline(raw)), raw)


def md_spans(text: object) -> str:
    """Text of ours in which `backticked` parts are code spans (a command to run, a
    setting), as one line of inline Markdown. Everything outside the backticks is escaped
    as by ``md``; a value interpolated into a code span stays inside it (code spans show
    their content as written). An unpaired backtick is literal text."""
    raw = _one_line(clean(text))
    parts = raw.split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: the last one is text
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    out: list[str] = []
    for i, part in enumerate(parts):
        code = i % 2 == 1
        if code and part.strip() and "\\" not in part:
            # removeMath reads backslashes even in code spans: such a part stays text
            part = part.replace(LITERAL_TICK, "`")
            ticks = _ticks(part, 1)  # longer than any backtick run of the value's own
            pad = " " if len(ticks) > 1 or (part.startswith(" ") and part.endswith(" ")) else ""
            out.append(f"{ticks}{pad}{part}{pad}{ticks}")
        else:
            out.append(_inline(f"`{part}`" if code else part))
    text_parts = "".join(p for i, p in enumerate(parts) if i % 2 == 0 or "\\" in p)
    return _nomath(_line_start("".join(out)), text_parts)


_AS_TEXT = frozenset({"markdown", "md"})
"""Info strings not used for data: JupyterLab highlights a ``markdown`` block's syntax, so
the ``[10]`` of ``In[10]`` showed as a link; the block shows the text as written."""


def md_code(text: object, lang: str = "text", style: str = "") -> str:
    """``text`` as a fenced code block that nothing in it can close, its text shown as
    written (a ``markdown`` block as ``text``: ``_AS_TEXT``). Text holding ``$`` or
    ``\\`` goes in a ``<pre>`` block instead, with those as entities: JupyterLab's
    ``removeMath`` reads ``\\begin{..}``, ``\\(`` and ``\\[`` even inside a fence, so an
    unbalanced one there could take the closing fence and what follows it. ``style``: an
    inline style of ours for the block (how it wraps), which makes it a ``<pre>`` too."""
    body = clean(text)
    lang = "text" if lang.lower() in _AS_TEXT else lang
    if style or _MATH_CHARS.search(body):
        escaped = (_html.escape(body.rstrip("\n"), quote=False)
                   .replace("$", "&#36;").replace("\\", "&#92;"))
        css = f' style="{html_attr(style)}"' if style else ""
        # the <code> on a line of its own (a newline right after <pre> is not shown): a
        # first line holding "|" must not start a Markdown table before the HTML block
        return (f'<pre class="tex2jax_ignore mathjax_ignore"{css}>\n<code class="language-'
                f'{_info(lang)}">{escaped}</code></pre>')
    return fence(body, lang)


def fence(text: str, lang: str = "text") -> str:
    """``text`` as it is (nothing cleaned, masked or escaped: the prompt's context blocks
    use it raw; ``md_code`` cleans first) in a backtick fence longer than any run of
    backticks inside it, so nothing in the text can close the fence; ``lang`` keeps only
    the characters an info string may hold (no backtick, no newline)."""
    body = text.rstrip("\n")
    ticks = _ticks(body, 3)
    return f"{ticks}{_info(lang)}\n{body}\n{ticks}"


def _ticks(text: str, at_least: int) -> str:
    """A run of backticks longer than any in ``text`` (and at least ``at_least`` long)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(at_least, longest + 1)


def _info(lang: str) -> str:
    return re.sub(r"[^\w+.#-]", "", lang)


def html(text: object) -> str:
    """``text`` as HTML element content (a table cell, a paragraph)."""
    raw = clean(text)
    escaped = _html.escape(raw, quote=True)
    if not _MATH_CHARS.search(raw):
        return escaped
    return f"{NOMATH}{escaped.replace('$', '&#36;').replace(chr(92), '&#92;')}{_NOMATH_END}"


def html_attr(text: object) -> str:
    """``text`` as the value of a quoted HTML attribute (MathJax does not read those)."""
    return _html.escape(clean(text), quote=True)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 provider", "3 providers",
    "1,234 rows" (thousands separated)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def short_count(n: int) -> str:
    """A count as a person skims it (token counts in notes and skip reasons):
    850 -> ``850``, 1234 -> ``1.2k``, 4000 -> ``4k``, 12345 -> ``12k``."""
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1000:.1f}".removesuffix(".0") + "k"
    return f"{round(n / 1000)}k"
