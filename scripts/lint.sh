#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff (rules pinned in pyproject.toml) and mypy on
# flintlm/. Uses the repo's .venv (made by scripts/setup.sh); VENV=<dir> points elsewhere.
# Both checks always run, so one CI log shows every finding; the exit status is non-zero if
# either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

for tool in ruff mypy; do
  if [[ ! -x "$VENV/bin/$tool" ]]; then
    echo "lint: $VENV/bin/$tool not found; run 'make setup' (or set VENV=<venv dir>)" >&2
    exit 1
  fi
done

status=0
echo "lint: ruff check flintlm tests bench"
"$VENV/bin/ruff" check flintlm tests bench || status=1
echo "lint: mypy flintlm"
"$VENV/bin/mypy" flintlm || status=1
exit $status
