#!/usr/bin/env bash
# The sanitizer run: the C of iommufs (cext/_native: pagetable.c, holes.c,
# procmem.c; devfs/_fuse; the preload shim) built with AddressSanitizer and
# UndefinedBehaviorSanitizer into a directory of its own, and the tests that
# run that C (list below) against that build: the C property tests in the
# pytest process, the fuzz test and the integration tests with the mount's
# server on it, the shim's tests with programs preloading it. The normal
# build is not touched.
#
#   bash scripts/sanitize.sh [PYTEST ARGS...]      # after scripts/setup.sh install
#
# Environment: SANITIZE_DIR (the build, default .sanitize/), IOMMUFS_FUZZ_SECONDS
# (default 30 here), IOMMUFS_FUZZ_SEED (replay). Any ASan or UBSan report
# fails the run: reports go to files under $SANITIZE_DIR/reports, which the
# suite's last test (tests/test_sanitized.py) requires to be empty, so the
# closing pytest summary counts it. If a sanitizer kills pytest itself, or
# a selection of tests leaves that check out, the reports are printed and a
# closing line says "1 failed". Exit status: pytest's, or 1 for reports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
OUT=${SANITIZE_DIR:-$ROOT/.sanitize}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPORTS=$OUT/reports

"$PY" cext/build_native.py --sanitize "$OUT"
"$PY" devfs/build_fuse.py --sanitize "$OUT" >/dev/null
"$PY" cext/build_preload.py --sanitize "$OUT" >/dev/null
rm -rf "$REPORTS"
mkdir -p "$REPORTS"

# CPython is not built with ASan: its runtime must be the first library
# loaded, so it is preloaded into every process of the run (servers and
# clients inherit the environment). Leak reports would be CPython's.
export IOMMUFS_SANITIZE_DIR=$OUT
export IOMMUFS_SANITIZE_REPORTS=$REPORTS
export LD_PRELOAD="$("$PY" cext/sanitize.py | tr : ' ')${LD_PRELOAD:+ $LD_PRELOAD}"
# A process a sanitizer ends exits 86, never pytest's 1 (tests failed).
export ASAN_OPTIONS="detect_leaks=0:exitcode=86:log_path=$REPORTS/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=86:log_path=$REPORTS/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export IOMMUFS_FUZZ_SECONDS=${IOMMUFS_FUZZ_SECONDS:-30}

# The tests that run our C: directly (the property tests of the page
# tables, free IOVA space and client memory, core's unit tests and its
# fuzz), through a server (transport, integration, hardening and fuzz
# tests) and through the shim (iommufs run). Not the kernel selftests and
# guest boots, whose minutes buy nothing more here, nor tests/test_faults.py,
# whose bounds (a killed client's traces gone within 2 s) are set for the
# normal build and missed under ASan on a loaded machine. Arguments naming
# tests replace this list; other arguments are added to it.
TESTS=(tests/test_pagetable.py tests/test_holes.py tests/test_procmem.py
       tests/test_iova_alloc_prop.py tests/test_core_*.py tests/test_fuzz_core.py
       tests/test_transport.py tests/test_integration*.py tests/test_hardening.py
       tests/test_run.py tests/test_fuzz.py tests/test_sanitized.py)
for a in "$@"; do
    case "$a" in
        tests/*|*.py|*.py::*) TESTS=() ;;
    esac
done

set +e
# Deselected: `kill -SEGV` of a shell, whose SIGSEGV the preloaded ASan
# runtime turns into its own report and exit status (it tests iommufs run's
# exit status, not our C). tests/test_sanitized.py's report check runs last
# (marker "last"): it reads the reports of everything before it.
"$PY" -m pytest -q \
    --deselect 'tests/test_run.py::test_exit_status[kill -SEGV $$-139]' "${TESTS[@]}" "$@"
rc=$?
set -e
reports=$(ls -A "$REPORTS")
if { [ $rc -gt 1 ] && [ $rc -ne 5 ]; } || { [ $rc -eq 0 ] && [ -n "$reports" ]; }; then
    # pytest did not count the reports: a sanitizer (or a signal) ended it,
    # or the selection left tests/test_sanitized.py out. Say it last.
    for f in "$REPORTS"/*; do
        [ -e "$f" ] || continue
        echo "=== $f"
        head -c 20000 "$f"
    done
    if [ $rc -eq 0 ]; then
        echo "1 failed: sanitizer reports above"
        rc=1
    else
        echo "1 failed: pytest exited with status $rc under the sanitizers (reports above)"
    fi
fi
exit $rc
