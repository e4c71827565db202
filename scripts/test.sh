#!/usr/bin/env bash
# Sets up the test environment (unless --no-setup) and runs the test suites.
# Each deep-learning backend runs in its own pytest process (specs/packages.md: never import
# TensorFlow and torch into one process).
#
# Usage: bash scripts/test.sh [--no-setup | --setup-only] [--lane fast|slow|all]
#                             [--suite core|torch|tf|ptychodus|all]
#   --no-setup    use the caller's environment as it is (e.g. `hatch run test`, .ci/run)
#   --setup-only  create/update the venv ($PTYCHO_TEST_VENV, default .venv) and stop
#   --lane        fast: -m "not slow"; slow: -m slow; all (default): every test, one pass
#   --suite       one pytest process only: core (core + cli + tests/), torch, tf, ptychodus
#                 (tests/ptychodus: acceptance against the real Ptychodus 1.7.0); default all
# Exit status: 0 when every suite passed (a suite with no test in the lane counts as passed).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${PTYCHO_TEST_VENV:-$ROOT/.venv}

usage() {
  echo "usage: bash scripts/test.sh [--no-setup | --setup-only] [--lane fast|slow|all]" \
    "[--suite core|torch|tf|ptychodus|all]" >&2
  exit 2
}
setup=1 setup_only=0 lane=all suite=all
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-setup) setup=0 ;;
    --setup-only) setup_only=1 ;;
    --lane) [[ $# -ge 2 ]] || usage; lane=$2; shift ;;
    --lane=*) lane=${1#--lane=} ;;
    --suite) [[ $# -ge 2 ]] || usage; suite=$2; shift ;;
    --suite=*) suite=${1#--suite=} ;;
    -h | --help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
  shift
done
case $lane in
  fast) marker=(-m "not slow") ;;
  slow) marker=(-m slow) ;;
  all) marker=() ;;
  *) echo "unknown lane: $lane" >&2; usage ;;
esac
case $suite in
  core | torch | tf | ptychodus | all) ;;
  *) echo "unknown suite: $suite" >&2; usage ;;
esac
if [[ $setup -eq 0 && $setup_only -eq 1 ]]; then
  echo "--no-setup and --setup-only exclude each other" >&2; exit 2
fi

if [[ $setup -eq 1 ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV" || exit 1
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip >/dev/null 2>&1
  python -m pip install -q -c constraints.txt -r requirements-test.txt \
    -e packages/ptycho-core -e packages/ptycho-torch -e packages/ptycho-tf -e packages/ptycho-cli \
    -e packages/ptycho-ptychodus \
    || { echo "test set-up failed"; exit 1; }
  # Ptychodus, headless, only for the conformance test (its full dependency set is a GUI stack).
  # The acceptance suite (tests/ptychodus) fails, not skips, without it: the pin is the contract's version.
  python -m pip install -q --no-deps "ptychodus==1.7.0" || { echo "test set-up failed (ptychodus)"; exit 1; }
  [[ $setup_only -eq 1 ]] && exit 0
fi

export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
status=0
run_suite() {
  local key=$1 name=$2; shift 2
  [[ $suite == all || $suite == "$key" ]] || return 0
  echo "=== $name (lane: $lane) ==="
  python -m pytest -q "${marker[@]}" "$@"
  local rc=$?
  # Exit 5 (no test selected in this lane) is not a failure; pytest's own line says so.
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then
    echo "$name: FAILED (pytest exit $rc)"
    status=1
  fi
}
run_suite core "core + cli (no framework in process)" \
  packages/ptycho-core/tests packages/ptycho-cli/tests tests --ignore=tests/ptychodus
run_suite torch "pytorch backend" packages/ptycho-torch/tests
run_suite tf "tensorflow backend (+ ptycho-ptychodus, which imports TF)" \
  packages/ptycho-tf/tests packages/ptycho-ptychodus/tests
run_suite ptychodus "ptychodus 1.7.0 acceptance" tests/ptychodus
exit $status
