"""The notebook user's one install (``pip install 'timmy-magic[lab]'``) brings everything
the tutorials import and JupyterLab itself: a tutorial that stops at its first import for
a user who followed the README is the failure this guards against."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_TO_DIST = {"pandas": "pandas", "pydantic": "pydantic", "ipywidgets": "ipywidgets",
                  "matplotlib": "matplotlib", "numpy": "pandas", "IPython": "ipython"}


def _requirement_names(extra: str, project: dict, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    names: set[str] = {re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower()
                       for r in project["dependencies"]}
    for req in project["optional-dependencies"][extra]:
        m = re.match(r"timmy-magic\[([\w,]+)\]", req)
        if m:
            for inner in m.group(1).split(","):
                if inner not in seen:
                    seen.add(inner)
                    names |= _requirement_names(inner, project, seen)
        else:
            names.add(re.split(r"[<>=\[; ]", req, maxsplit=1)[0].lower())
    return names


def test_the_lab_extra_holds_jupyterlab_and_every_tutorial_import() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _requirement_names("lab", project)
    assert {"jupyterlab", "ipykernel", "ipywidgets", "xllamacpp"} <= names
    imported: set[str] = set()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                imported |= set(re.findall(r"^\s*(?:from|import)\s+(\w+)",
                                           "".join(cell["source"]), re.M))
    third_party = {m for m in imported if m not in sys.stdlib_module_names} - {"timmy_magic"}
    assert third_party, "the tutorials import something besides timmy_magic"
    missing = {m for m in third_party if IMPORT_TO_DIST.get(m, m).lower() not in names}
    assert missing == set(), f"tutorial imports not in [lab]: {missing}"


def test_the_readme_gives_the_lab_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[lab]'" in readme and "jupyter lab notebooks/" in readme
