#!/usr/bin/env bash
# The main job on a fresh machine: set up (prebuilt wheels only, nothing compiled), then
# ask the embedded local default (llama.cpp + Gemma 3 270M, started on demand by
# timmy-magic itself: no server to start by hand, no API key), execute the quickstart
# notebook headless against it, and print its prompts and answers as plain text.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
t0=$SECONDS
bash scripts/setup.sh
rc=0
.venv/bin/python scripts/demo_run.py "$@" || rc=$?
echo
echo "demo: $([ $rc = 0 ] && echo done || echo FAILED) in $((SECONDS - t0)) s"
exit $rc
