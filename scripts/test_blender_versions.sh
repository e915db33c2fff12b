#!/usr/bin/env bash
# Run the add-on's real-Blender tests (pytest -m blender) against several Blender releases.
#
#   scripts/test_blender_versions.sh                 # 4.2 LTS, 4.5 LTS and 5.0
#   scripts/test_blender_versions.sh 4.2 5.0         # only these
#   PYTEST_ARGS="-k modes" scripts/test_blender_versions.sh 4.2
#
# Blender ships on PyPI as `bpy` (Blender as a Python module, ~370 MB a release, Python 3.11 only).
# One virtual environment per release under ${KILN_BPY_VENVS:-.venv-bpy}/<version> (kept and reused;
# delete it to start fresh): torch==2.13.0 first (pip then keeps the CPU build instead of pulling a
# multi-GB CUDA one), then this checkout with its test extra, then the pinned bpy over the one the
# extra brings. The last lines say which releases passed; the exit status is 0 only if all did.
# CI runs the one bpy of the test extra; this script is for checking a release before claiming it.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
VENVS=${KILN_BPY_VENVS:-$ROOT/.venv-bpy}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(4.2 4.5 5.0)

if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "bpy wheels need Python 3.11: set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

declare -A RESULT
for v in "${VERSIONS[@]}"; do
  dir="$VENVS/$v"
  log="$VENVS/$v.log"
  mkdir -p "$VENVS"
  echo "=== bpy $v: environment $dir (log $log)"
  {
    set -e
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "bpy==$v.*"
  } >"$log" 2>&1
  if [ $? -ne 0 ]; then
    echo "    set-up failed:"; tail -5 "$log" | sed 's/^/    /'
    RESULT[$v]="set-up failed"
    continue
  fi
  got=$("$dir/bin/python" -c 'import bpy; print(bpy.app.version_string)' 2>/dev/null | tail -1)
  echo "    Blender $got; running pytest -m blender"
  # shellcheck disable=SC2086
  "$dir/bin/python" -m pytest -m blender -q -p no:cacheprovider ${PYTEST_ARGS:-} tests/ 2>&1 | tee -a "$log" | tail -15
  rc=${PIPESTATUS[0]}
  summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  if [ "$rc" -eq 0 ]; then RESULT[$v]="passed (Blender $got: $summary)"; else RESULT[$v]="FAILED (Blender $got: $summary)"; fi
done

echo
echo "=== Blender releases"
status=0
for v in "${VERSIONS[@]}"; do
  echo "bpy $v: ${RESULT[$v]}"
  case "${RESULT[$v]}" in passed*) ;; *) status=1 ;; esac
done
exit $status
