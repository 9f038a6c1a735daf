"""How our outputs read in a real JupyterLab 4 (headless Chromium): an error block wraps
at word boundaries (JupyterLab's own output ``<pre>`` breaks anywhere), a long unbroken
token in an answer or a table wraps instead of making the output scroll sideways, and
the ``In[N]`` of a ``--show-context`` display is text, not a highlighted link. Each
detector has a negative control: the same text in JupyterLab's own styles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support.servers import free_port

from .lab import JupyterLab, open_notebook, run_cell, write_notebook

pytestmark = pytest.mark.integration
WORD = "antidisestablishmentarianism"
TOKEN = "https://example.invalid/" + "a1b2c3d4" * 40
CELLS = [
    "%load_ext timmy_magic",
    "%%llm\nHello?",  # nothing listens: the real 'no provider could answer' block
    ("from timmy_magic.notebook.display.failures import ErrorBlock\n"
     f"ErrorBlock('a long message', ' '.join(['{WORD}'] * 40), (), ('retry',))"),
    ("from timmy_magic.model.chat import Result, RouteTrace, Timings, Usage\n"
     f"Result(text='see {TOKEN} and {' '.join([WORD] * 30)}', provider='p', model='m', "
     "usage=Usage(1, 2), timings=Timings(0.1, 0.2, 10.0), trace=RouteTrace())"),
    "x = 1",
    "%%llm --cells 1 --show-context\nExplain the cell above.",
    # negative controls: the same text in JupyterLab's own output styles
    f"print(' '.join(['{WORD}'] * 40))",
    f"from IPython.display import Markdown\nMarkdown('see {TOKEN}')",
    "Markdown('````markdown\\nThe failing cell, In[4]:\\n````')",
]

SPLIT_WORDS = """([el, word]) => {
  // how many occurrences of word in el are drawn on more than one line
  let split = 0;
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    for (let i = n.data.indexOf(word); i >= 0; i = n.data.indexOf(word, i + 1)) {
      const r = document.createRange();
      r.setStart(n, i); r.setEnd(n, i + word.length);
      const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
      if (tops.size > 1) split++;
    }
  }
  return split;
}"""

SIDEWAYS = "e => e.scrollWidth - e.clientWidth"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[JupyterLab]:
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "cascade:\n  health_timeout_seconds: 1\n  connect_timeout_seconds: 1\n"
        "  max_retries_per_provider: 0\nproviders:\n"
        f"  - {{name: nothing-listens-here, type: llama_cpp,"
        f" base_url: 'http://127.0.0.1:{free_port()}'}}\n")
    root = tmp_path / "nb"
    root.mkdir()
    write_notebook(root / "outputs.ipynb", CELLS)
    lab = JupyterLab(root, {"TIMMY_PROVIDERS": str(providers)}, tmp_path / "lab.log")
    try:
        yield lab
    finally:
        lab.stop()


def split_words(out: Locator) -> int:
    return int(out.page.evaluate(SPLIT_WORDS, [out.element_handle(), WORD]))


def sideways(out: Locator) -> int:
    return max(int(o.evaluate(SIDEWAYS)) for o in out.locator(".jp-OutputArea-output").all())


def test_outputs_wrap_at_words_and_never_scroll_sideways(lab: JupyterLab, page: Page) -> None:
    page.set_viewport_size({"width": 700, "height": 1000})  # lines that must wrap
    open_notebook(page, lab, "outputs.ipynb", reset=True)
    outs = [run_cell(page, i, timeout_s=60) for i in range(len(CELLS))]

    failed = outs[1]
    expect(failed).to_contain_text("no provider could answer")
    pre = failed.locator("pre").first
    assert pre.evaluate("e => getComputedStyle(e).wordBreak") == "normal"
    assert pre.evaluate("e => getComputedStyle(e).overflowWrap") == "anywhere"

    block = outs[2]
    expect(block).to_contain_text("a long message")
    assert split_words(block.locator("pre").first) == 0  # wrapped, at word boundaries
    assert sideways(block) <= 1

    answer = outs[3]
    expect(answer).to_contain_text("p · m")
    assert split_words(answer) == 0 and sideways(answer) <= 1  # the token is broken instead

    shown = outs[5]
    expect(shown).to_contain_text("User message")
    expect(shown.locator("code.language-markdown")).to_have_count(0)
    expect(shown.locator("pre code span")).to_have_count(0)  # no token highlighted as a link
    expect(shown).to_contain_text("In[")

    # negative controls: JupyterLab's own styles split the word, scroll, highlight
    assert split_words(outs[6].locator("pre").first) > 0
    assert sideways(outs[7]) > 1
    expect(outs[8].locator("pre code span").first).to_be_attached()
