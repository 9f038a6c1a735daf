"""The tutorials replayed from recorded answers (issue 15): which ones, the providers each
needs (live when recording, at a closed port when replaying), and the notebook copy whose
LLM cells nbval checks. Shared by tests/notebooks/test_replay.py and
scripts/record_answers.py, so both ask exactly the same requests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "http://127.0.0.1:9"
"""Nothing listens there: in replay, a request that went out would fail, not answer."""
LLM_CELL = ("%%llm",)
REPLAY_CHECKED = "replay-check-output"
"""The tag of a cell that is not ``%%llm`` but shows what the model said (``VAR.data``, a
``timmy_magic.map`` result): ``nbval-ignore-output`` live, checked in replay."""
NOT_REPLAYED = ("--error", "--cells")
"""Cells whose prompt holds execution counts: nbval runs every cell as In[1], so what
they ask differs from the recording (nbclient counts as a kernel does); they stay
unchecked, as in the live run. ``%llm fix`` / ``explain`` likewise."""


def shipped_gemma_model() -> dict[str, object]:
    """The model of the shipped ``local-gemma`` (completion mode and its defaults), so a
    tutorial answers as a newcomer's default set-up does."""
    from timmy_magic.config import load_config, packaged_default

    shipped = load_config(packaged_default()).provider("local-gemma")
    assert shipped is not None
    m = shipped.models[0]
    return {"name": m.name, "default": True, "mode": m.mode, "temperature": m.temperature,
            "stop": list(m.stop), "params": dict(m.params), "max_tokens": m.max_tokens}


def _gemma_config(name: str, window: int | None = None) -> Callable[[str, Path], str]:
    def write(url: str, work: Path) -> str:
        model = shipped_gemma_model()
        if window:
            model["context_window"] = window
        doc = {"cascade": {"first_token_timeout_seconds": 60, "timeout_seconds": 120},
               "providers": [{"name": "local-gemma", "type": "llama_cpp", "base_url": url,
                              "models": [model]}]}
        path = work / f"{name}.providers.yaml"
        path.write_text(json.dumps(doc))
        return str(path)
    return write


@dataclass(frozen=True)
class Replayed:
    notebook: str
    servers: tuple[str, ...]
    providers: Callable[[str, Path], str] | None = None
    """Writes the providers.yaml the notebook reads (TIMMY_PROVIDERS) for a llama URL."""

    def env(self, urls: dict[str, str], work: Path) -> dict[str, str]:
        env = {"LLAMA_SERVER_URL": urls.get("llama", CLOSED),
               "VLLM_MLX_URL": urls.get("vllm", CLOSED)}
        if self.providers is not None:
            env["TIMMY_PROVIDERS"] = self.providers(urls.get("llama", CLOSED), work)
        return env


REPLAYED = {
    "01": Replayed("01-quickstart.ipynb", ("llama",), _gemma_config("01")),
    "06": Replayed("06-notebook-context.ipynb", ("llama",), _gemma_config("06", 2048)),
    "07": Replayed("07-structured-and-batch.ipynb", ("llama",), _gemma_config("07")),
    "08": Replayed("08-side-by-side.ipynb", ("llama", "vllm")),
}


def answers_path(spec: Replayed) -> Path:
    return ROOT / "notebooks" / "answers" / (Path(spec.notebook).stem + ".sqlite3")


def replay_env(spec: Replayed, work: Path, answers: Path) -> dict[str, str]:
    """Every provider at a closed port, the cache in replay mode on ``answers``."""
    return {**spec.env({}, work), "TIMMY_CACHE_MODE": "replay",
            "TIMMY_CACHE_PATH": str(answers)}


def checked_copy(spec: Replayed, work: Path) -> Path:
    """The notebook with its LLM cells (and those tagged ``replay-check-output``) no longer
    ``nbval-ignore-output``: in replay their outputs are the recorded ones, so nbval
    compares them too."""
    nb = json.loads((ROOT / "notebooks" / spec.notebook).read_text())
    for cell in nb["cells"]:
        src = "".join(cell.get("source", ""))
        tags = cell.get("metadata", {}).get("tags", [])
        first = src.split("\n", 1)[0]
        answer = (src.startswith(LLM_CELL) and not any(f in first for f in NOT_REPLAYED)) \
            or REPLAY_CHECKED in tags
        if cell["cell_type"] == "code" and answer and "nbval-ignore-output" in tags:
            tags.remove("nbval-ignore-output")
    out = work / spec.notebook
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    return out


def answers_copy(spec: Replayed, work: Path) -> Path:
    """A copy of the committed answers (a replay updates last-used times)."""
    dst = work / "answers.sqlite3"
    shutil.copyfile(answers_path(spec), dst)
    return dst
