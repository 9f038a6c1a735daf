#!/usr/bin/env bash
# The main job on a fresh machine: set up, then execute the quickstart notebook headless
# against the embedded local default (llama-server + Gemma 3 270M, started on demand by
# timmy-magic itself: no server to start by hand, no API key).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python scripts/run_notebook.py notebooks/01-quickstart.ipynb "$@"
