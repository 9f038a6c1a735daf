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
CLOSED_PORT = "9"
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


def _gemma_config(name: str, window: int | None = None,
                  tools: bool = False) -> Callable[[str, Path], str]:
    def write(url: str, work: Path) -> str:
        model = shipped_gemma_model()
        if window:
            model["context_window"] = window
        if tools:  # the prompted protocol (a completion-mode model)
            model["capabilities"] = ["tools"]
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
    own_ports: tuple[str, ...] = ()
    """Variables holding the port of a server the notebook starts itself (a subprocess, as
    a user would in a terminal): a free port when recording and in replay too, since the
    notebook waits for that server to be healthy. In replay it gets health probes and the
    Python API's calls (``router.complete`` is not cached), never a ``%%llm`` request."""
    managed_ports: tuple[str, ...] = ()
    """Variables holding the port of a ``launch:`` provider: a free port when recording,
    the closed one in replay (every answer it gave is recorded, so nothing starts it)."""
    live_only: tuple[tuple[str, str], ...] = ()
    """(start of a cell's source, why): cells whose output cannot be the same in replay:
    checked live but not in replay, or an LLM cell that demonstrates a live failure (no
    answer, so none recorded). ``checked_copy`` marks them ``nbval-ignore-output``; the
    notebook keeps their live output (scripts/record_answers.py), which the live tests
    check and a reader sees."""

    data: tuple[str, ...] = ()
    """Files under notebooks/ the notebook reads by a relative path (``data/x.csv``):
    copied into the folder it runs in (``copy_data``)."""

    def env(self, urls: dict[str, str], work: Path, replay: bool = False) -> dict[str, str]:
        from tests.support.servers import free_port

        env = {"LLAMA_SERVER_URL": urls.get("llama", CLOSED),
               "VLLM_MLX_URL": urls.get("vllm", CLOSED)}
        if self.providers is not None:
            env["TIMMY_PROVIDERS"] = self.providers(urls.get("llama", CLOSED), work)
        for var in self.own_ports:
            env[var] = str(free_port())
        for var in self.managed_ports:
            env[var] = CLOSED_PORT if replay else str(free_port())
        return env

    def ports(self, env: dict[str, str]) -> list[str]:
        """The ports of the servers the notebook may start (none may outlive it)."""
        return [env[v] for v in self.own_ports + self.managed_ports]


REPLAYED = {
    "01": Replayed("01-quickstart.ipynb", ("llama",), _gemma_config("01")),
    "06": Replayed("06-notebook-context.ipynb", ("llama",), _gemma_config("06", 2048)),
    "07": Replayed("07-structured-and-batch.ipynb", ("llama",), _gemma_config("07")),
    "08": Replayed("08-side-by-side.ipynb", ("llama", "vllm")),
    "09": Replayed("09-tools.ipynb", ("llama",), _gemma_config("09", tools=True)),
    "10": Replayed("10-background.ipynb", ("llama",), _gemma_config("10")),
    # the notebook writes its own providers.yaml (local-gemma two ways) from LLAMA_SERVER_URL
    "11": Replayed("11-evaluate.ipynb", ("llama",), data=("data/capitals.csv",)),
}

# Tutorials 02 and 04 start one llama-server themselves and have launch: manage another;
# they record with both live. In replay every %%llm cell is answered by the cache, before
# any routing: so a cached answer has an empty route trace, sends no request (no failure
# is counted, no circuit moves, no cost is spent, no managed server is started), and a
# cell that failed live (a pin to a stopped server, a closed gate, no provider left) has
# no recorded answer: its replay shows the replay-miss block. Those cells are
# nbval-ignore-output live already (they show live health); the ones below are checked
# live and not in replay, for the reason given.
_ROUTE = ("the route trace: a cached answer is not routed, so its trace is empty "
          "(the provider printed above it is the recorded one, and the answer cell is "
          "checked)")
_FAILED = ("a failure demonstrated live: nothing answered, so nothing was recorded, and "
           "in replay it is a replay miss: ")
REPLAYED["02"] = Replayed(
    "02-pin-or-cascade.ipynb", (), own_ports=("GEMMA_A_PORT",),
    managed_ports=("GEMMA_B_PORT",),
    live_only=(
        ("answer = timmy_magic.last()\nprint(answer.provider)\nprint(*answer.trace", _ROUTE),
        ("print(*timmy_magic.last().trace.lines()", _ROUTE),
        ('router.health()["gemma-a"].circuit',
         ("the circuit opens on gemma-a's third failure in a row; in replay the failover "
          "cell and the pinned cell send nothing (cache hit, replay miss), so only the "
          "Python call fails and the circuit stays closed")),
        ("%%llm -p gemma-a", _FAILED + "a pin to the stopped gemma-a"),
        ("%llm stop gemma-b",
         ("gemma-b is never started in replay (the cache answered for it), so there is "
          "nothing to stop")),
    ))
REPLAYED["04"] = Replayed(
    "04-health-and-failover.ipynb", (), own_ports=("GEMMA_PORT",),
    managed_ports=("CLOUD_PORT",),
    live_only=(
        ("print(*timmy_magic.last().trace.lines()", _ROUTE),
        ("gate = router.gate()",
         ("the daily budget: a cached answer costs nothing (no request was sent), so the "
          "cloud answer does not spend it and the gate stays open")),
        ("states.append(circuit())\nprint",
         ("the half-open trial: the answer comes from the cache, so no request tries gemma "
          "and its circuit stays half-open (closed → closed → open → half_open → half_open)")),
        ("%%llm -p cloud\nThe three primary", _FAILED + "a pin to cloud, gate closed"),
        ("%%llm\nThe opposite of hot is", _FAILED + "circuit open and gate closed"),
        ("%llm stop cloud",
         ("cloud is never started in replay (the cache answered for it), so there is "
          "nothing to stop")),
    ))


def answers_path(spec: Replayed) -> Path:
    return ROOT / "notebooks" / "answers" / (Path(spec.notebook).stem + ".sqlite3")


def replay_env(spec: Replayed, work: Path, answers: Path) -> dict[str, str]:
    """Every provider at a closed port, the cache in replay mode on ``answers``."""
    return {**spec.env({}, work, replay=True), "TIMMY_CACHE_MODE": "replay",
            "TIMMY_CACHE_PATH": str(answers)}


def replay_tags(spec: Replayed, cells: list[dict]) -> list[list[str]]:
    """The tags each cell has in the replay: LLM cells (and those tagged
    ``replay-check-output``) no longer ``nbval-ignore-output``, the ``live_only`` ones
    ``nbval-ignore-output`` (every cell whose source starts so). Each ``live_only`` start
    must name at least one cell, so that an edited notebook fails here instead of
    checking a live-only cell in replay."""
    tags_of = []
    for cell in cells:
        src = "".join(cell.get("source", ""))
        tags = list(cell.get("metadata", {}).get("tags", []))
        first = src.split("\n", 1)[0]
        answer = (src.startswith(LLM_CELL) and not any(f in first for f in NOT_REPLAYED)) \
            or REPLAY_CHECKED in tags
        if cell["cell_type"] == "code" and answer and "nbval-ignore-output" in tags:
            tags.remove("nbval-ignore-output")
        tags_of.append(tags)
    for start, _why in spec.live_only:
        hits = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
                and "".join(c.get("source", "")).startswith(start)]
        assert hits, f"{spec.notebook}: live_only {start!r} names no cell"
        for i in hits:
            if "nbval-ignore-output" not in tags_of[i]:
                tags_of[i].append("nbval-ignore-output")
    return tags_of


def checked_in_replay(spec: Replayed, cells: list[dict]) -> list[bool]:
    """Which code cells nbval compares in the replay."""
    return [c["cell_type"] == "code" and "nbval-ignore-output" not in tags
            for c, tags in zip(cells, replay_tags(spec, cells), strict=True)]


def checked_copy(spec: Replayed, work: Path) -> Path:
    """The notebook as nbval checks it in replay (``replay_tags``): the outputs of its LLM
    cells are the recorded ones, so nbval compares them too."""
    nb = json.loads((ROOT / "notebooks" / spec.notebook).read_text())
    for cell, tags in zip(nb["cells"], replay_tags(spec, nb["cells"]), strict=True):
        if tags or "tags" in cell.get("metadata", {}):
            cell.setdefault("metadata", {})["tags"] = tags
    out = work / spec.notebook
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    copy_data(spec, work)
    return out


def copy_data(spec: Replayed, work: Path) -> None:
    """The files the notebook reads (``Replayed.data``), where it runs."""
    for name in spec.data:
        dst = work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "notebooks" / name, dst)


def answers_copy(spec: Replayed, work: Path) -> Path:
    """A copy of the committed answers (a replay updates last-used times)."""
    dst = work / "answers.sqlite3"
    shutil.copyfile(answers_path(spec), dst)
    return dst


# Tutorial 05 records against the real vllm-mlx (the test fixture's, adopted by the
# notebook). In replay nothing answers at VLLM_MLX_URL and no vllm-mlx command is on PATH
# here, so the notebook takes its newcomer path for the server itself; its %%llm cells are
# answered by the cache (a pinned cell is looked up before the pin is tried).
_NO_SERVER = "says whether a vllm-mlx server answers: in replay none does (a closed port)"
REPLAYED["05"] = Replayed(
    "05-vllm-mlx.ipynb", ("vllm",),
    live_only=(
        ("import os\nimport shutil", _NO_SERVER),
        ("%llm start vllm-mlx", _NO_SERVER + ", so it cannot be started or adopted"),
        ("import timmy_magic\n\nrouter", ("the launcher's message on adopting the running "
                                          "server; in replay there is none to adopt")),
        ('report = router.health()["vllm-mlx"]', ("the server's health report; in replay "
                                                  "nothing answers, so it is empty")),
    ))
