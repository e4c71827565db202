#!/usr/bin/env bash
# Sets up the test environment (unless --no-setup) and runs every test suite.
# Each deep-learning backend runs in its own pytest process (specs/packages.md: never import
# TensorFlow and torch into one process).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${PTYCHO_TEST_VENV:-$ROOT/.venv}

if [[ "${1:-}" != "--no-setup" ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV" || exit 1
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip >/dev/null 2>&1
  python -m pip install -q -c constraints.txt -r requirements-test.txt \
    -e packages/ptycho-core -e packages/ptycho-torch -e packages/ptycho-tf -e packages/ptycho-cli \
    || { echo "test set-up failed"; exit 1; }
  # Ptychodus, headless, only for the conformance test (its full dependency set is a GUI stack).
  python -m pip install -q --no-deps ptychodus || echo "warning: ptychodus not installed"
fi
# With --no-setup the caller's environment (e.g. `hatch run test`) is used as it is.

export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
status=0
run_suite() {
  local name=$1; shift
  echo "=== $name ==="
  python -m pytest -q "$@"
  local rc=$?
  if [[ $rc -eq 5 ]]; then
    echo "($name: no tests collected)"
  elif [[ $rc -ne 0 ]]; then
    echo "$name: FAILED (pytest exit $rc)"
    status=1
  fi
}
run_suite "core + cli (no framework in process)" packages/ptycho-core/tests packages/ptycho-cli/tests tests
run_suite "pytorch backend" packages/ptycho-torch/tests
run_suite "tensorflow backend" packages/ptycho-tf/tests
exit $status
