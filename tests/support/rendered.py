"""What a Jupyter front end makes of a Markdown or HTML output, for tests that assert text
we did not write stays text.

Three stages, as in JupyterLab (@jupyterlab/rendermime ``renderMarkdown``):

1. ``jupyter_math(src)``: ``removeMath`` (rendermime/src/latex.ts), ported line for line:
   the math spans it takes out of the Markdown source before parsing it;
2. ``render(src)``: a real Markdown parser (markdown-it-py if installed, else mistune, which
   nbconvert uses) with raw HTML passed through, as JupyterLab's marked does;
3. ``mathjax_math(html)``: what MathJax 3's ``FindTeX`` would typeset in the rendered DOM
   (JupyterLab's config: ``$``/``$$``/``\\(``/``\\[`` delimiters, environments, escapes),
   skipping code, pre and elements of class ``mathjax_ignore`` / ``tex2jax_ignore``.

``problems(src)`` runs all three and lists what a reader would not see as plain text: math,
raw HTML other than ours, tags other than those Markdown makes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

# ------------------------------------------------------------------ 1. removeMath

_MATHSPLIT = re.compile(r"(\$\$?|\\(?:begin|end)\{[a-z]*\*?\}|\\[{}$]|[{}]|(?:\n\s*)+|@@\d+@@|"
                        r"\\\\(?:\(|\)|\[|\]))", re.I)


def jupyter_math(text: str) -> list[str]:
    """The math spans JupyterLab's ``removeMath`` hides from the Markdown parser."""
    if "`" in text or "~~~" in text:
        text = text.replace("~", "~T")
        text = re.sub(r"^(?P<fence>`{3,}|(~T){3,})[^`\n]*\n([\s\S]*?)^(?P=fence)`*$",
                      lambda m: m.group().replace("$", "~D"), text, flags=re.M)
        text = re.sub(r"(^|[^\\])(`+)([^\n]*?[^`\n])\2(?!`)",
                      lambda m: m.group().replace("$", "~D"), text, flags=re.M)
    blocks = _MATHSPLIT.split(text.replace("\r\n", "\n").replace("\r", "\n"))
    found: list[str] = []
    start: int | None = None
    end: str | None = None
    last: int | None = None
    braces = 0

    def take(i: int, j: int) -> None:
        found.append("".join(blocks[i:j + 1]))
        for k in range(i + 1, j + 1):
            blocks[k] = ""

    i = 1
    while i < len(blocks):
        block = blocks[i]
        if block.startswith("@"):
            pass  # a marker-shaped text is stored and put back as it was
        elif start is not None:
            if block == end:
                if braces:
                    last = i
                else:
                    take(start, i)
                    start = end = last = None
            elif re.search(r"\n.*\n", block):
                if last is not None:
                    i = last
                    take(start, i)
                start = end = last = None
                braces = 0
            elif block == "{":
                braces += 1
            elif block == "}" and braces:
                braces -= 1
        elif block in ("$", "$$"):
            start, end, braces = i, block, 0
        elif block in ("\\\\(", "\\\\["):
            start, end, braces = i, "\\\\)" if block.endswith("(") else "\\\\]", 0
        elif block[1:6] == "begin":
            start, end, braces = i, "\\end" + block[6:], 0
        i += 2
    if start is not None and last is not None:
        take(start, last)
    return found


# ------------------------------------------------------------------ 2. Markdown -> HTML


def _renderer() -> tuple[str, Callable[[str], str]]:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        import mistune

        md = mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])
        return "mistune " + mistune.__version__, lambda src: str(md(src))
    mi = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    return "markdown-it-py", mi.render


PARSER, render = _renderer()


# ------------------------------------------------------------------ 3. the DOM, as MathJax reads it

SKIP = {"script", "noscript", "style", "textarea", "pre", "code", "annotation",
        "annotation-xml", "select", "option"}
IGNORE = re.compile(r"(^| )(mathjax_ignore|tex2jax_ignore)( |$)")
VOID = {"br", "hr", "img", "input", "wbr", "meta", "link", "area", "base", "col", "source"}


class Dom(HTMLParser):
    """Tags and attributes of an HTML fragment, its text, and the strings MathJax 3 scans
    (``HTMLDomStrings``: a new string at every element, none inside skipped or ignored
    ones)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, tuple[tuple[str, str | None], ...]]] = []
        self.text: list[str] = []
        self.strings: list[str] = [""]
        self._stack: list[tuple[str, bool]] = []

    def _hidden(self) -> bool:
        return bool(self._stack) and self._stack[-1][1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, tuple(attrs)))
        if tag == "br":
            if not self._hidden():
                self.strings[-1] += "\n"
            return
        if tag in VOID:
            return
        self.strings.append("")
        cls = dict(attrs).get("class") or ""
        hidden = self._hidden() or tag in SKIP or bool(IGNORE.search(cls))
        self._stack.append((tag, hidden))

    def handle_endtag(self, tag: str) -> None:
        for k in range(len(self._stack) - 1, -1, -1):
            if self._stack[k][0] == tag:
                del self._stack[k:]
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if not self._hidden():
            self.strings[-1] += data


def dom(html: str) -> Dom:
    d = Dom()
    d.feed(html)
    d.close()
    return d


_TEX_START = re.compile(r"\$\$|\\\(|\\\[|\$|\\begin\s*\{([^}]*)\}|\\[\\$]")
_TEX_END = {"$$": "$$", "\\(": "\\)", "\\[": "\\]", "$": "$"}


def mathjax_math(html: str) -> list[str]:
    """The spans MathJax would typeset (a start delimiter with its end later in the same
    string; ``\\$`` and ``\\\\`` are escapes)."""
    found = []
    for s in dom(html).strings:
        for m in _TEX_START.finditer(s):
            token = m.group()
            if token in ("\\\\", "\\$"):
                continue
            end = "\\end{" + m.group(1) + "}" if m.group(1) is not None else _TEX_END[token]
            close = s.find(end, m.end())
            if close >= 0:
                found.append(s[m.start():close + len(end)])
    return found


# ------------------------------------------------------------------ the verdict

NOMATH_SPAN = ("span", (("class", "tex2jax_ignore mathjax_ignore"),))
INLINE = {"em", "strong", "code", "del", "s", "br"}
"""Markdown's inline formatting: left out of ``structure`` (text that should have stayed
text but became emphasis or code is caught by comparing the text a reader sees)."""


def structure(html: str) -> list[str]:
    """The elements of an HTML fragment, in order, but inline formatting and our no-math
    spans: what a value must not change (a new row, cell, block, link, image, script...)."""
    return [f"<{tag}{''.join(f' {k}={_drawn(v)!r}' for k, v in attrs)}>"
            for tag, attrs in (_no_nomath_pre(t, a) for t, a in dom(html).tags)
            if (tag, attrs) != NOMATH_SPAN and not (tag in INLINE and not attrs)]


def _drawn(value: str | None) -> str | None:
    """An image we drew (a chart as a PNG data URL) differs with the labels drawn in it;
    its pixels cannot add an element, so only that it is one counts."""
    png = "data:image/png;base64,"
    return png if value is not None and value.startswith(png) else value


def _no_nomath_pre(tag: str, attrs: list[tuple[str, str | None]]) -> tuple[str, Any]:
    """markup.md_code writes a code block holding math characters as a <pre> MathJax skips:
    the same element as a fenced block's <pre>."""
    if tag == "pre" and attrs == NOMATH_SPAN[1]:
        return tag, []
    return tag, attrs


def text_of(html: str) -> str:
    """The text a reader sees, whitespace collapsed."""
    return " ".join("".join(dom(html).text).split())


def math(src: str, *, html: bool = False) -> list[str]:
    """Math a Jupyter front end would typeset in this Markdown (or HTML) output."""
    found = [] if html else [f"removeMath takes {m!r}" for m in jupyter_math(src)]
    return found + [f"MathJax typesets {m!r}" for m in mathjax_math(src if html else render(src))]
