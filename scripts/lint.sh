#!/usr/bin/env bash
# Static checks, the one place CI, hatch and pre-commit take them from.
#   lint   ruff check + ruff format --check over the whole tree ([tool.ruff] in pyproject.toml)
#   types  mypy over the four distributions' src/ ([tool.mypy] in pyproject.toml names the
#          packages and source roots, so the command is a bare `mypy`)
# Usage: bash scripts/lint.sh [lint|types|all]   (default all). Runs with the `python` on PATH:
# activate the test venv first (bash scripts/test.sh --setup-only; . .venv/bin/activate).
set -uo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
case $what in
  lint | types | all) ;;
  *) echo "usage: bash scripts/lint.sh [lint|types|all]" >&2; exit 2 ;;
esac

status=0
if [[ $what != types ]]; then
  python -m ruff check . || status=1
  python -m ruff format --check . || status=1
fi
if [[ $what != lint ]]; then
  python -m mypy || status=1
fi
exit $status
