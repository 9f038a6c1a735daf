"""What a fresh process imports: ``import timmy_magic`` and ``%load_ext timmy_magic`` pull
in only what the load and a first cell need; the features behind other commands (the
cache's store, context, side by side, map, bench, the line commands) and the heavy
libraries come on first use. Structure, not time: benchmarks/startup.py prints the
times."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.magic.conftest import local

HEAVY = ("pandas", "numpy", "matplotlib", "ipywidgets", "openai", "anthropic", "litellm")
ON_FIRST_USE = ("timmy_magic.cache.store", "timmy_magic.cache.files", "timmy_magic.context",
                "timmy_magic.compare", "timmy_magic.batch", "timmy_magic.bench",
                "timmy_magic.notebook.commands", "timmy_magic.notebook.cached",
                "timmy_magic.notebook.magics", "timmy_magic.notebook.display.widget",
                "timmy_magic.notebook.display.compare_view", "timmy_magic.providers.transport",
                "aiohttp", "msgspec", "timmy_magic.evals",
                "timmy_magic.notebook.display.eval_view")

PROBE = r"""
import json, sys
step = sys.argv[1]
before = set(sys.modules)
if step == "import":
    import timmy_magic
else:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    ip = InteractiveShell.instance()
    before = set(sys.modules)
    with capture_output() as cap:
        ip.run_line_magic("load_ext", "timmy_magic")
    if step == "comparison":
        from timmy_magic.compare import Column, Comparison
        from timmy_magic.model.chat import Result, RouteTrace, Timings, Usage
        answer = Result("a grid cell", "a", "m", Usage(1, 1), Timings(0.1, 0.2, 5.0),
                        RouteTrace(("a",), (), ()))
        shown = ip.display_formatter.format(Comparison((Column("a", "a", None),), [answer]))
        print(json.dumps([shown[0].get("text/html", "")]))
        raise SystemExit
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _probe(step: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({"providers": [local("closed", "http://127.0.0.1:9")]}))
    env = {**os.environ, "TIMMY_PROVIDERS": str(path),
           "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", PROBE, step], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_import_timmy_magic_imports_the_package_alone(tmp_path: Path) -> None:
    ours = [m for m in _probe("import", tmp_path) if m.startswith("timmy_magic")]
    assert ours == ["timmy_magic", "timmy_magic._version"]
    assert not {"pydantic", "httpx", "IPython", "asyncio", *HEAVY} & set(_probe("import", tmp_path))


def test_load_ext_leaves_the_features_of_other_commands_for_their_first_use(
        tmp_path: Path) -> None:
    assert all(importlib.util.find_spec(m) for m in ON_FIRST_USE)  # no name gone stale
    loaded = set(_probe("load", tmp_path))
    assert "timmy_magic.routing.router" in loaded  # the probe really loaded the extension
    assert loaded & {*ON_FIRST_USE, *HEAVY} == set()


def test_a_comparison_is_still_shown_as_its_grid_when_compare_comes_after_the_load(
        tmp_path: Path) -> None:
    html = _probe("comparison", tmp_path)[0]
    assert "a grid cell" in html and "<" in html
