"""Loading and unloading the extension, and the accessors of the loaded one.

``%load_ext timmy_magic`` builds the router from providers.yaml (a bad or untrusted file
is one line, never a failed load), registers one ``TimmyMagics`` per shell and starts the
background health checks; loading again replaces the previous instance cleanly.
"""

from __future__ import annotations

import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from timmy_magic.config import Config, find_config, found_by_search, load_config
from timmy_magic.config.files import shown_path
from timmy_magic.jobs import Job
from timmy_magic.model.chat import Result
from timmy_magic.model.errors import ConfigError
from timmy_magic.notebook.background import show_job
from timmy_magic.notebook.cell import TimmyMagics
from timmy_magic.notebook.session import Session
from timmy_magic.routing.router import Router
from timmy_magic.text.markup import count

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from timmy_magic.batch import MapResult
    from timmy_magic.compare import Comparison
    from timmy_magic.evals import Evaluation

_EXTENSIONS: weakref.WeakKeyDictionary[Any, TimmyMagics] = weakref.WeakKeyDictionary()
"""The one extension instance per shell."""


def _build_router() -> tuple[Router, str]:
    """The router from providers.yaml; a bad file gives an empty router and one line."""
    path = find_config()
    try:
        with found_by_search():  # found, not named: trusted only if trusted otherwise
            config = load_config(path)
    except ConfigError as exc:
        return Router(Config(source=str(path))), (
            f"timmy-magic: {exc} (loaded with no providers: fix it, then %llm reload)")
    enabled = sum(p.enabled for p in config.providers)
    warn = f", {len(config.warnings)} warnings" if config.warnings else ""
    held = f"\ntimmy-magic: {config.held_back_line}" if config.held_back else ""
    return Router(config), (f"timmy-magic: {count(len(config.providers), 'provider')} ({enabled} "
                            f"enabled{warn}) from {shown_path(config.source)} (health checks running "
                            f"in background){held}")


def _formatter(ip: Any, mime: str) -> Any:
    formatters = getattr(getattr(ip, "display_formatter", None), "formatters", {})
    return formatters.get(mime)


_COMPARISON = ("timmy_magic.compare", "Comparison")
_EVALUATION = ("timmy_magic.evals.evaluation", "Evaluation")


def _comparison_html(comparison: Comparison) -> str:
    from timmy_magic.notebook.display.compare_view import comparison_html

    return comparison_html(comparison)


def _evaluation_html(evaluation: Evaluation) -> str:
    from timmy_magic.notebook.display.eval_view import evaluation_html

    return evaluation_html(evaluation)


def register_displays(ip: Any) -> None:
    """How the notebook shows our values: a ``Result`` as its rendered answer, a
    ``Comparison`` (``cmp``, ``timmy_magic.last()``) as its grid, an ``Evaluation`` as its
    table and chart. The values (``model/``, ``compare/``, ``evals/``) know no renderer;
    the notebook layer registers one for them here, the grid and the evaluation by name
    (IPython's deferred printers), so loading imports neither side by side nor evals."""
    from timmy_magic.notebook.display.answer import answer_markdown

    markdown = _formatter(ip, "text/markdown")
    if markdown is not None:
        markdown.for_type(Result, answer_markdown)
    html = _formatter(ip, "text/html")
    if html is not None:
        html.for_type_by_name(*_COMPARISON, _comparison_html)
        html.for_type_by_name(*_EVALUATION, _evaluation_html)
    shown = _job_formatter(ip)
    if shown is not None:
        shown.for_type(Job, lambda job: show_job(lambda: _session_or_none(ip), job))


def _job_formatter(ip: Any) -> Any:
    return getattr(getattr(ip, "display_formatter", None), "ipython_display_formatter", None)


def _session_or_none(ip: Any) -> Session | None:
    ext = _EXTENSIONS.get(ip)
    return ext.session if ext is not None else None


def unregister_displays(ip: Any) -> None:
    for mime, typ in (("text/markdown", Result), ("text/html", ".".join(_COMPARISON)),
                      ("text/html", ".".join(_EVALUATION))):
        formatter = _formatter(ip, mime)
        if formatter is not None:
            with suppress(KeyError):
                formatter.pop(typ)
    shown = _job_formatter(ip)
    if shown is not None:
        with suppress(KeyError):
            shown.pop(Job)


def load(ip: InteractiveShell) -> TimmyMagics:
    old = _EXTENSIONS.pop(ip, None)
    if old is not None:
        old.close()
    register_displays(ip)
    built, message = _build_router()
    ext = TimmyMagics(ip, built)
    ip.register_magics(ext)
    ip.events.register("pre_run_cell", ext._pre_run_cell)
    ip.events.register("post_run_cell", ext._post_run_cell)
    _EXTENSIONS[ip] = ext
    built.start_health_loop()
    print(message)
    return ext


def unload(ip: InteractiveShell) -> None:
    ext = _EXTENSIONS.pop(ip, None)
    if ext is not None:
        ext.close()
    unregister_displays(ip)


def extension(ip: Any = None) -> TimmyMagics:
    """The extension loaded in ``ip`` (default: the running shell)."""
    if ip is None:
        from IPython import get_ipython

        ip = get_ipython()
    ext = _EXTENSIONS.get(ip) if ip is not None else None
    if ext is None:
        raise RuntimeError("timmy_magic is not loaded here: run %load_ext timmy_magic")
    return ext


def session(ip: Any = None) -> Session:
    """The notebook session of ``ip`` (default: the running shell): what ``map``, the
    panel and the accessors below use, never the magics object."""
    return extension(ip).session


def last() -> Result | Comparison | MapResult | Evaluation | None:
    """The last %%llm result of this shell (partial if it was interrupted; a Comparison
    after a side-by-side cell, a MapResult or Evaluation after ``map`` or ``evaluate``),
    or None."""
    return session().last_result


def get_router() -> Router:
    """The router shared by %%llm, the panel and %llm bench (``timmy_magic.get_router()``;
    ``timmy_magic.routing.router`` is the module)."""
    return session().router




def panel(router: Router | None = None, **kw: Any) -> Any:
    """A provider panel (ipywidgets) over this shell's router, or over ``router``."""
    if router is None:
        return session().panel()
    from timmy_magic.notebook.display.widget import panel as make_panel

    return make_panel(router, **kw)

