"""llama.cpp's HTTP server from a prebuilt wheel (PyPI ``xllamacpp``), in a process of its own.

    python -m timmy_magic.servers.llama_prebuilt -m MODEL.gguf --host 127.0.0.1 --port 8181 \\
        [-c N] [-t N] [-tb N] [--parallel N] [--kv-unified] [--no-jinja] \\
        [--chat-template gemma] [--alias NAME] ...

The embedded default's fallback when no compiled ``llama-server`` is installed (see
``local.llama_runtime``): it takes the subset of llama-server's flags the managed launch
uses, so the launch machinery (health on ``/health``, idle stop, crash handling, adopting
a server already answering) treats it exactly like llama-server. It serves llama.cpp's own
endpoints (``/health``, ``/props``, ``/v1/models``, ``/v1/completions``,
``/v1/chat/completions`` with streaming and usage, ``/completion``, ``json_schema``,
``response_format``) until SIGTERM or SIGINT, then shuts the server down and exits 0.

``xllamacpp.Server`` lives as long as the Python object, inside the process that made it:
this entry point is that process, so a model that crashes takes only this process down,
never a Jupyter kernel. A flag outside the subset is refused (exit 2) rather than ignored.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

EXIT_USAGE = 2
EXIT_NOT_INSTALLED = 3
EXIT_FAILED = 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m timmy_magic.servers.llama_prebuilt", allow_abbrev=False,
        description="llama.cpp's server from the prebuilt xllamacpp wheel; takes a "
                    "subset of llama-server's flags and serves until SIGTERM/SIGINT.")
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    ap.add_argument("-a", "--alias", help="model name the server reports and accepts")
    ap.add_argument("-c", "--ctx-size", type=int, help="KV cache size (0: the model's)")
    ap.add_argument("-t", "--threads", type=int)
    ap.add_argument("-tb", "--threads-batch", type=int, help="default: --threads")
    ap.add_argument("-np", "--parallel", type=int, help="slots (concurrent requests)")
    ap.add_argument("-b", "--batch-size", type=int)
    ap.add_argument("-ub", "--ubatch-size", type=int)
    ap.add_argument("-n", "--n-predict", type=int, help="default output cap (-1: none)")
    kvu = ap.add_mutually_exclusive_group()
    kvu.add_argument("-kvu", "--kv-unified", dest="kv_unified", action="store_true",
                     default=None, help="one KV cache shared by all slots")
    kvu.add_argument("-no-kvu", "--no-kv-unified", dest="kv_unified", action="store_false")
    jinja = ap.add_mutually_exclusive_group()
    jinja.add_argument("--jinja", dest="jinja", action="store_true", default=None)
    jinja.add_argument("--no-jinja", dest="jinja", action="store_false",
                       help="--chat-template then names a llama.cpp built-in template")
    ap.add_argument("--chat-template", help="built-in template name (with --no-jinja) or "
                                            "Jinja source")
    ap.add_argument("--metrics", action="store_true", help="serve /metrics")
    return ap


_PLAIN_FLAGS = (("ctx_size", "n_ctx"), ("parallel", "n_parallel"), ("batch_size", "n_batch"),
                ("ubatch_size", "n_ubatch"), ("n_predict", "n_predict"),
                ("kv_unified", "kv_unified"), ("jinja", "use_jinja"))
"""llama-server flags that map one to one onto a ``CommonParams`` field."""


def params(args: argparse.Namespace) -> Any:
    """The ``xllamacpp.CommonParams`` for the parsed flags (ImportError without it)."""
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    if args.alias:
        p.model_alias = {args.alias}
    if args.threads is not None:
        p.cpuparams.n_threads = args.threads
    batch_threads = args.threads_batch if args.threads_batch is not None else args.threads
    if batch_threads is not None:
        p.cpuparams_batch.n_threads = batch_threads
    for flag, field in _PLAIN_FLAGS:  # set only when given: llama.cpp's defaults stand
        if (value := getattr(args, flag)) is not None:
            setattr(p, field, value)
    if args.chat_template:
        p.chat_template = args.chat_template
    if args.metrics:
        p.endpoint_metrics = True
    return p


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or SIGINT (call from the main thread); the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Installed before the (blocking) model load: a SIGTERM that arrives while the model
    # loads is handled as soon as the load returns, and the server is shut down cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        p = params(args)
    except ImportError:
        print("llama_server_prebuilt: xllamacpp is not installed: pip install "
              "'timmy-magic[local]' (or pip install xllamacpp)", file=sys.stderr, flush=True)
        return EXIT_NOT_INSTALLED
    import xllamacpp as xlc

    t0 = time.monotonic()
    try:
        server = xlc.Server(p)
    except RuntimeError as exc:  # a bad model, a port in use: llama.cpp logged why above
        print(f"llama_server_prebuilt: the server did not start: {exc}", file=sys.stderr,
              flush=True)
        return EXIT_FAILED
    print(f"llama_server_prebuilt: xllamacpp {getattr(xlc, '__version__', '?')} serving "
          f"{args.model} at {server.listening_address} (up in {time.monotonic() - t0:.1f}s)",
          file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        t1 = time.monotonic()
        del server  # stops the HTTP server and frees the model
        print(f"llama_server_prebuilt: stopped in {time.monotonic() - t1:.2f}s",
              file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # an unknown flag: usage on stderr, exit 2
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
