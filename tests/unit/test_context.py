"""Issue 13, the pure half: summaries of kernel values, secret masking, fitting a context
to a token budget, the fix/explain prompts. Real pandas, numpy, matplotlib and PIL objects."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest
from IPython.display import Image as IPyImage
from PIL import Image as PILImage

from timmy_magic import context as C
from timmy_magic.context import (
    CellItem,
    Context,
    ContextError,
    ErrorItem,
    Frame,
    VarItem,
    cut_middle,
    explain_request,
    fix_request,
    image_item,
    mask_item,
    mask_secrets,
    parse_cells_spec,
    split_fix,
)
from timmy_magic.context.summaries import image_kind, is_instance_of, summarize
from timmy_magic.model.tokens import estimate_tokens
from timmy_magic.privacy.redact import REDACT

matplotlib.use("Agg")


# ---------------------------------------------------------------- summaries

@pytest.fixture
def df() -> pd.DataFrame:
    return pd.DataFrame({"price": [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5],
                         "qty": [1, 2, 3, 4, 5, 6, 7],
                         "name": list("abcdefg")})


def test_dataframe_summary_has_shape_dtypes_head_and_numeric_describe(df: pd.DataFrame
                                                                     ) -> None:
    text = summarize(df)
    assert text.startswith("pandas DataFrame: 7 rows × 3 columns")
    assert "price: float64" in text and "qty: int64" in text and "name:" in text
    head = text.split("head(5):\n")[1].split("describe()")[0]
    assert "e" in head and "f" not in head.split("\n")[-2]  # 5 rows: a..e, not f or g
    assert head.count("\n") == 6  # header line + 5 rows
    describe = text.split("describe() of the numeric columns:\n")[1]
    assert "mean" in describe and "price" in describe and "qty" in describe
    assert "name" not in describe  # only numeric columns
    assert "4.5" in describe  # the mean of price


def test_dataframe_without_numeric_columns_has_no_describe() -> None:
    text = summarize(pd.DataFrame({"s": ["x", "y"]}))
    assert "2 rows × 1 column" in text and "describe" not in text


def test_series_summary(df: pd.DataFrame) -> None:
    text = summarize(df["qty"])
    assert text.startswith("pandas Series 'qty': 7 values, dtype int64")
    assert "describe():" in text and "mean" in text
    assert "describe" not in summarize(df["name"])


def test_ndarray_summary_has_shape_dtype_some_values_and_statistics() -> None:
    a = np.arange(1000, dtype=np.float32).reshape(100, 10)
    text = summarize(a)
    assert text.startswith("numpy ndarray: shape (100, 10), dtype float32, 1,000 elements")
    assert "..." in text and "999." in text  # numpy's summarised print: ends shown
    assert "min 0.0, max 999.0, mean 499.5" in text
    assert len(text) < 800


def test_non_numeric_ndarray_has_no_statistics() -> None:
    assert "min" not in summarize(np.array(["a", "b"]))


def test_containers_show_length_and_a_bounded_repr() -> None:
    big = {f"k{i}": list(range(100)) for i in range(500)}
    text = summarize(big, max_chars=600)
    assert text.startswith("dict of 500 keys: {'k0': [0, 1,")
    assert "..." in text and len(text) <= 600
    assert summarize([1, 2, 3]) == "list of 3 items: [1, 2, 3]"
    assert summarize((1,)).startswith("tuple of 1 item:")
    assert summarize({1, 2}).startswith("set of 2 items:")


def test_long_string_is_cut_and_says_its_full_length() -> None:
    text = summarize("x" * 10_000, max_chars=500)
    assert text.startswith("str of 10,000 characters (first")
    assert len(text) <= 500 and text.endswith("…")
    assert summarize("hello") == "str of 5 characters:\nhello"


def test_functions_and_classes_show_signature_and_first_doc_line() -> None:
    def area(width: float, height: float = 1.0) -> float:
        """Area of a rectangle.

        More text that is not shown."""
        return width * height

    class Shape:
        """A shape."""

        def __init__(self, sides: int) -> None:
            self.sides = sides

        def perimeter(self) -> int:
            return self.sides

    text = summarize(area)
    assert "area(width: 'float', height: 'float' = 1.0) -> 'float'" in text
    assert "Area of a rectangle." in text and "More text" not in text
    text = summarize(Shape)
    assert "class " in text and "Shape" in text and "(sides: 'int')" in text
    assert "A shape." in text and "methods: perimeter" in text
    assert summarize(len).startswith("function len(obj, /)")


def test_anything_else_is_type_and_cut_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "T" * 5000

    text = summarize(Thing(), max_chars=300)
    assert text.startswith(f"{__name__}.") and "Thing: TTT" in text and len(text) <= 300
    assert summarize(3.5) == "float: 3.5"


def test_a_repr_that_raises_does_not_break_the_summary() -> None:
    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("boom")

    assert summarize(Bad()).endswith("<repr failed: RuntimeError: boom>")
    assert summarize([Bad()]) == "list of 1 item: [<repr failed: RuntimeError: boom>]"


def test_a_failing_library_call_is_one_line_in_the_summary() -> None:
    class FakeFrame:  # looks like pandas by name and module, breaks on use
        shape = (1, 1)

        @property
        def dtypes(self) -> object:
            raise ValueError("no dtypes")

    FakeFrame.__name__ = "DataFrame"
    FakeFrame.__module__ = "pandas.core.frame"
    text = summarize(FakeFrame())
    assert text.startswith("pandas DataFrame: 1 row × 1 column")
    assert "(dtypes failed: ValueError: no dtypes)" in text


def test_recognition_is_by_module_and_name_without_importing() -> None:
    assert is_instance_of(pd.DataFrame(), "pandas", "DataFrame")
    assert not is_instance_of(pd.Series(dtype=int), "pandas", "DataFrame")

    class DataFrame:  # same name, wrong module
        pass

    assert not is_instance_of(DataFrame(), "pandas", "DataFrame")
    assert "DataFrame" in summarize(DataFrame()) and "rows" not in summarize(DataFrame())


def test_summaries_and_context_import_none_of_the_optional_libraries() -> None:
    code = ("import sys\n"
            "from timmy_magic.context import build_context\n"
            "from timmy_magic.context.summaries import summarize\n"
            "summarize({'a': 1}); summarize(object()); summarize('x')\n"
            "print([m for m in ('pandas', 'numpy', 'matplotlib', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- images

def _png(width: int = 12, height: int = 8) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_kinds_are_recognised_and_encoded_as_png() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([1, 2, 3])
    try:
        pil = PILImage.new("CMYK", (30, 20))
        ipy = IPyImage(data=_png(), format="png")
        assert [image_kind(v) for v in (fig, pil, ipy, 3)] == \
            ["matplotlib", "pil", "ipython", None]
        for name, value in (("fig", fig), ("pil", pil), ("ipy", ipy)):
            item = image_item(name, value)
            assert item is not None and item.mime == "image/png"
            assert item.data.startswith(b"\x89PNG\r\n\x1a\n")
            assert item.data_url().startswith("data:image/png;base64,")
            assert base64.b64decode(item.data_url().split(",", 1)[1]) == item.data
        assert image_item("pil", pil).width == 30  # type: ignore[union-attr]
        assert "PIL Image, 30 × 20 px" in image_item("pil", pil).text  # type: ignore[union-attr]
        assert "matplotlib Figure, 100 × 50 px" in summarize(fig)
        assert image_item("n", np.zeros(3)) is None
    finally:
        plt.close(fig)


def test_an_image_without_data_is_a_clear_error() -> None:
    url_only = IPyImage(url="https://example.com/x.png")
    with pytest.raises(ContextError, match="could not be encoded.*no data"):
        image_item("pic", url_only)


# ---------------------------------------------------------------- secrets

def test_env_secrets_are_masked_with_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "canary-openai-0123456789")
    monkeypatch.setenv("DB_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("GH_TOKEN", "short")  # 4 characters and more: masked
    monkeypatch.setenv("NPM_AUTH", "abc")  # under 4 characters: not masked
    monkeypatch.setenv("HOME_DIR_NAME", "canary-not-a-secret")
    output = str(dict(os.environ))  # what print(os.environ) shows
    masked, n = mask_secrets(output)
    assert "canary-openai-0123456789" not in masked and "hunter2hunter2" not in masked
    assert "'OPENAI_API_KEY': '***'" in masked
    assert "canary-not-a-secret" in masked and "'GH_TOKEN': '***'" in masked
    assert "'NPM_AUTH': 'abc'" in masked
    assert n >= 2


def test_registered_and_extra_secrets_and_plain_credentials_are_masked() -> None:
    REDACT.add(["registered-secret-4242"])
    text = ("a registered-secret-4242 b extra-secret-77 "
            "key sk-abcdefghijklmnop1234 Authorization: Bearer abcdef1234567890xyz "
            "url postgres://me:pa55word@db/x")
    masked, n = mask_secrets(text, ["extra-secret-77"], environ={})
    for secret in ("registered-secret-4242", "extra-secret-77", "abcdefghijklmnop1234",
                   "abcdef1234567890xyz", "pa55word"):
        assert secret not in masked
    assert n == 5


def test_keyword_arguments_in_code_are_not_mistaken_for_secrets() -> None:
    code = "client = OpenAI(api_key=my_key, token=tok)\nmax_tokens=256"
    assert mask_secrets(code, environ={}) == (code, 0)


def test_mask_item_masks_every_field_and_counts_the_text() -> None:
    err = ErrorItem(name="E", text="E: leaked sekret-value-1", type="E",
                    message="leaked sekret-value-1", cell_source="x = 'sekret-value-1'",
                    frames=(Frame("In[1]", 1, "<module>", "x = 'sekret-value-1'"),))
    masked, n = mask_item(err, ["sekret-value-1"], environ={})
    assert n == 1
    assert "sekret" not in repr(masked)
    assert masked.cell_source == "x = '***'" and masked.frames[0].line == "x = '***'"


# ---------------------------------------------------------------- fitting

def cell(n: int, size: int) -> CellItem:
    return CellItem.of(n, f"# cell {n}\n" + "x" * size, None)


def var(name: str, size: int) -> VarItem:
    return VarItem(name=name, text="v" * size)


def test_estimates_are_four_characters_a_token() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_a_context_that_fits_is_unchanged() -> None:
    ctx = Context(prompt="q", items=(cell(1, 100), var("df", 100)))
    fitted = ctx.fit(10_000)
    assert fitted.items == ctx.items and fitted.dropped == ()
    assert "cut" not in fitted.note()


def test_fit_drops_oldest_cells_first() -> None:
    ctx = Context(prompt="q", items=(cell(1, 400), cell(2, 400), cell(3, 400),
                                     var("df", 400)))
    budget = ctx.total_tokens() - 90  # one cell (~110 tokens) too many
    fitted = ctx.fit(budget)
    assert [i.name for i in fitted.items] == ["In[2]", "In[3]", "df"]
    assert [i.name for i in fitted.dropped] == ["In[1]"] and fitted.dropped[0].cut
    assert fitted.total_tokens() <= budget
    assert not any(i.cut for i in fitted.items)
    assert fitted.note().endswith("(cut: 1 cell)")
    assert fitted.rows()[-1] == {"kind": "cell", "name": "In[1]", "characters":
                                 fitted.dropped[0].characters, "tokens": 0, "cut": True,
                                 "dropped": True}


def test_after_the_cells_long_values_are_shortened_evenly() -> None:
    ctx = Context(prompt="question", items=(cell(1, 100), var("small", 300),
                                            var("big", 20_000), var("big2", 8_000)))
    budget = 2_500
    fitted = ctx.fit(budget)
    assert fitted.total_tokens() <= budget
    assert [i.name for i in fitted.dropped] == ["In[1]"]
    by_name = {i.name: i for i in fitted.items}
    assert by_name["small"].text == "v" * 300 and not by_name["small"].cut
    assert by_name["big"].cut and by_name["big2"].cut
    assert "characters cut" in by_name["big"].text
    assert abs(by_name["big"].characters - by_name["big2"].characters) < 50  # even shares
    assert fitted.prompt == "question"


def test_a_tiny_budget_drops_images_then_the_largest_items_and_keeps_the_prompt() -> None:
    img = image_item("pic", IPyImage(data=_png(400, 400), format="png"))
    assert img is not None and img.tokens == 213
    ctx = Context(prompt="p" * 400, items=(var("a", 2000), var("b", 3000), img))
    fitted = ctx.fit(200, vision=True)
    assert fitted.prompt == "p" * 400
    assert fitted.images == () and "pic" in [i.name for i in fitted.dropped]
    assert fitted.total_tokens(vision=True) <= 200
    assert len(fitted.items) == 1 and fitted.items[0].cut  # both cut to the minimum first
    assert fitted.items[0].characters == C.MIN_CUT_CHARS
    assert fitted.dropped[0].name == "pic" and len(fitted.dropped) == 2


def test_cut_middle_keeps_start_and_end() -> None:
    text = "START" + "m" * 1000 + "END"
    out = cut_middle(text, 200)
    assert out.startswith("START") and out.endswith("END") and len(out) <= 200
    assert "characters cut" in out


# ---------------------------------------------------------------- rendering

def test_prompt_text_blocks_and_messages() -> None:
    ctx = Context(prompt="Why?", system="be brief",
                  items=(CellItem.of(3, "x = 1\nx", "1"), var("df", 10)))
    text = ctx.prompt_text()
    assert text.index("### Cell In[3]") < text.index("### Variable `df`") < \
        text.index("### Request\nWhy?")
    assert "```python\nx = 1\nx\n# Out[3]:\n# 1\n```" in text
    msgs = ctx.as_messages()
    assert [m.role for m in msgs] == ["system", "user"] and msgs[1].content == text
    assert Context(prompt="plain").prompt_text() == "plain"
    assert Context(prompt="plain").note() == ""


def test_a_fence_inside_a_value_cannot_close_its_block() -> None:
    item = VarItem(name="s", text="before\n```\nafter")
    assert item.block().startswith("### Variable `s`\n````text\n")


def test_images_are_described_to_text_models_and_parts_for_vision_models() -> None:
    img = image_item("pic", IPyImage(data=_png(), format="png"))
    assert img is not None
    ctx = Context(prompt="What is in it?", items=(img,))
    assert ctx.needs_vision
    assert "this model cannot see it" in ctx.prompt_text()
    parts = ctx.user_parts()
    assert parts[0]["type"] == "text" and "cannot see" not in parts[0]["text"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": img.data_url()}}


def test_note_and_markdown() -> None:
    ctx = Context(prompt="q", items=(cell(1, 10), cell(2, 10), var("a", 10),
                                     var("b", 10)), masked=2)
    assert re.fullmatch(r"context: 2 cells, 2 vars, ~\d+ tokens \(2 secrets masked\)",
                        ctx.note())
    md = ctx.render_markdown()
    assert "| cell | In\\[1\\] |" in md and "User message:" in md
    assert "### Request" in md


# ---------------------------------------------------------------- cells spec

@pytest.mark.parametrize("spec, expected", [
    ("3", (3, None, None)), (5, (5, None, None)), ("2:5", (None, 2, 5)),
    ("2:", (None, 2, None)), (":4", (None, 1, 4)), ("0:2", (None, 1, 2)),
])
def test_cells_spec(spec: str, expected: tuple[int | None, ...]) -> None:
    assert parse_cells_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", ":", "a", "1-3", "-2", "5:2", "1:2:3"])
def test_bad_cells_spec_is_a_one_line_error(spec: str) -> None:
    with pytest.raises(ContextError, match="--cells"):
        parse_cells_spec(spec)


# ---------------------------------------------------------------- fix / explain

def _error(message: str = "division by zero") -> ErrorItem:
    return ErrorItem.of(name="ZeroDivisionError", type="ZeroDivisionError",
                        message=message, cell_number=4,
                        cell_source="k = 'sk-abcdefghijklmnop1234'\n1/0",
                        frames=(Frame("In[4]", 2, "<module>", "1/0"),), library_frames=2)


def test_fix_request_asks_for_a_complete_cell_in_one_python_block() -> None:
    system, user = fix_request(_error())
    assert "one line" in system and "```python" in system and "complete" in system
    assert "### Last error: ZeroDivisionError in In[4]" in user
    assert "ZeroDivisionError: division by zero" in user
    assert "The failing cell, In[4]:\nk = " in user and "1/0" in user
    assert "In[4], line 2, in <module>" in user and "(2 library frames not shown)" in user
    assert "abcdefghijklmnop1234" not in user  # masked
    assert user.endswith("Fix the cell In[4] (the last error above).")
    system, user = fix_request(_error(), "other = 1")
    assert "other = 1" in user and "k = " not in user


def test_explain_request_asks_for_no_code() -> None:
    system, user = explain_request(_error())
    assert "Do not write out a corrected cell" in system
    assert user.endswith("Explain this error: ZeroDivisionError in the cell In[4] (above).")


def test_a_long_error_is_fitted_by_its_message_keeping_the_cell_and_traceback() -> None:
    ctx = Context(prompt="Fix it.", items=(_error("k" * 1_600_000),))
    fitted = ctx.fit(2_000)
    [item] = fitted.items
    assert item.cut and fitted.total_tokens() <= 2_000
    assert "The failing cell, In[4]:" in item.text and "1/0" in item.text
    assert "(2 library frames not shown)" in item.text


def test_split_fix_answer() -> None:
    answer = "Guard the zero.\n\n```python\nx = 0\nprint(1 / x if x else 0)\n```\n"
    assert split_fix(answer) == ("Guard the zero.", "x = 0\nprint(1 / x if x else 0)")
    assert split_fix("no code here") == ("no code here", None)
    assert split_fix("Fix:\n```\ny = 2\n```") == ("Fix:", "y = 2")


def test_show_context_with_no_context_has_no_empty_table() -> None:
    shown = Context(prompt="just a question").render_markdown()
    assert "no context: only the prompt is sent" in shown and "| kind |" not in shown
    assert "just a question" in shown
    masked = Context(prompt="key=***", masked=1).render_markdown()
    assert "no context: only the prompt is sent (1 secret masked in it)" in masked
    assert "| kind |" not in masked
    with_items = Context(prompt="q", items=(CellItem.of(3, "x = 1", ""),)).render_markdown()
    assert "| kind | name |" in with_items
