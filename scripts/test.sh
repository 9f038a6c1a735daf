#!/usr/bin/env bash
# Set up everything (idempotent) and run the whole test suite in one pytest invocation:
# unit, router faults, real servers, magics, widgets, notebooks (nbval), browser.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --all || { echo "test.sh: setup failed" >&2; exit 1; }
bash scripts/check || { echo "test.sh: the checks failed (lint, types or layer rules)" >&2; exit 1; }
export TIMMY_TEST_STRICT=1   # a missing backend or tool is a failure, never a skip
# The tutorials in notebooks/ run under nbval from tests/*/test_notebook*.py, each against
# the real servers it needs (started by fixtures), so they are not collected directly.
.venv/bin/python -m pytest tests -p no:nbmake -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
