#!/usr/bin/env bash
# CI's sanitizer stage: build the C++ core test and the _core extension with AddressSanitizer and
# UndefinedBehaviorSanitizer, prove the harness is live on deliberately broken code, then run the core
# test, the _core tests and a time-boxed fuzz pass of the kernels and of every file reader under them.
# Any sanitizer report stops its process (halt_on_error, -fno-sanitize-recover=all), is kept in
# BUILD_DIR/reports, printed, and makes this script exit non-zero.
#
#   tests/sanitize.sh [BUILD_DIR]   (default: build/sanitize beside this checkout; kept between runs so
#                                    that a re-run only recompiles what changed)
#   MPO_FUZZ_SECONDS=60             the whole fuzz pass's budget in seconds (default 60), split evenly
#                                    between the kernels (tests/fuzz_core.py) and the readers
#                                    (tests/fuzz_readers.py)
#   PYTHON, CXX                     the interpreter to test with (default python) and the compiler (g++)
#   MPO_SANITIZE_JOBS               compilers at a time (default: one per 3 GB available, at most nproc)
#
# tests/test_sanitize.py runs this from `python -m pytest` (MPO_SANITIZE=0 leaves it out). To time the
# stage on its own, from scratch:
#   rm -rf build/sanitize && time nice -n 5 tests/sanitize.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build/sanitize}"
PYTHON="${PYTHON:-python}"
CXX="${CXX:-g++}"
FUZZ_SECONDS="${MPO_FUZZ_SECONDS:-60}"
stage_start=$SECONDS
say() { echo "== $* ($((SECONDS - stage_start)) s)"; }

# Cheap to compile, still worth running: -O1 (Eigen at -O0 is too slow to test under ASan), -g1 (line
# tables only: full debug info of Eigen's templates costs time and memory, and reports need only lines),
# no LTO (pybind11 adds it by default; it re-optimises every binding at link time).
SANITIZE="-fsanitize=address,undefined"
FLAGS="-O1 -g1 $SANITIZE -fno-sanitize-recover=all -fno-omit-frame-pointer"
configure=(cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=None "-DCMAKE_CXX_COMPILER=$CXX"
           "-DCMAKE_CXX_FLAGS=$FLAGS" "-DCMAKE_EXE_LINKER_FLAGS=$SANITIZE"
           "-DCMAKE_MODULE_LINKER_FLAGS=$SANITIZE" -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF
           -DMPO_BUILD_TESTS=ON -DMPO_NATIVE=OFF -DSKBUILD=ON
           "-DPython_EXECUTABLE=$(command -v "$PYTHON")"
           "-Dpybind11_DIR=$("$PYTHON" -m pybind11 --cmakedir)")
if command -v ninja >/dev/null; then configure+=(-G Ninja); fi
mkdir -p "$BUILD"
BUILD="$(cd "$BUILD" && pwd)"  # absolute: the checks below compare it with module paths
if [ ! -f "$BUILD/CMakeCache.txt" ] && ! "${configure[@]}" >"$BUILD/configure.log" 2>&1; then
  tail -n 40 "$BUILD/configure.log"; exit 1
fi
# Compilers side by side only where memory allows: an instrumented split.cpp takes about 2 GB, so one
# per 3 GB available (MemAvailable), at most one per core, at least one; whatever
# CMAKE_BUILD_PARALLEL_LEVEL says, since CI machines are shared. MPO_SANITIZE_JOBS overrides.
jobs="${MPO_SANITIZE_JOBS:-}"
if [ -z "$jobs" ]; then
  avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
  # The cores this process may run on, not nproc's default answer: that honours OMP_NUM_THREADS, which
  # a caller may have set to 1 for its own kernels (measured: a Dask nanny had written it into the test
  # process, and CI's cold build ran one compiler on two idle cores).
  cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
  jobs=$(( ${avail_kb:-0} / 3000000 ))
  [ "$jobs" -gt "$cores" ] && jobs=$cores
  [ "$jobs" -lt 1 ] && jobs=1
fi
say "building test_core and _core with ASan+UBSan, $jobs compiler(s) at a time"
if ! cmake --build "$BUILD" --target test_core _core --parallel "$jobs" >"$BUILD/build.log" 2>&1; then
  grep -v '^\[' "$BUILD/build.log" | tail -n 60; exit 1
fi
"$CXX" $FLAGS "$ROOT/tests/cpp/sanitizer_canary.cpp" -o "$BUILD/sanitizer_canary"
say "built"

# Reports go to files (log_path), not only to stderr, so that none is lost to an output capture.
REPORTS="$BUILD/reports"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
# detect_leaks=0: the interpreter keeps its allocations to the end, which LeakSanitizer would report.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"
reports() { ls "$REPORTS" 2>/dev/null | wc -l; }
# GCC links libubsan beside libasan with its own copy of the runtime, and that copy writes its reports to
# stderr whatever log_path says (measured: no file, with log_path in UBSAN_OPTIONS or ASAN_OPTIONS). So
# each stage's stderr is kept too, and a sanitizer report in it goes to the reports folder.
SANITIZER_MARKERS="runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer"
keep_stderr_reports() {  # $1: a stage's stderr file
  if grep -Eq "$SANITIZER_MARKERS" "$1" 2>/dev/null; then cp "$1" "$REPORTS/$(basename "$1")"; fi
}
fail_on_reports() {
  if [ "$(reports)" -ne 0 ]; then
    for f in "$REPORTS"/*; do echo "---- sanitizer report $f"; cat "$f"; done
    echo "FAILED: sanitizer report during $1"; exit 1
  fi
}

# The canaries must be caught: a non-zero status and a report naming the bug. $1: what to look for.
expect_caught() {
  local want="$1"; shift
  if "$@" >/dev/null 2>"$BUILD/canary.stderr"; then echo "FAILED: the canary '$*' was not stopped: the sanitizers are not live"; exit 1; fi
  keep_stderr_reports "$BUILD/canary.stderr"
  if ! cat "$REPORTS"/* 2>/dev/null | grep -q "$want"; then
    echo "FAILED: the canary '$*' left no report with '$want'"; ls -l "$REPORTS"; exit 1
  fi
  rm -f "$REPORTS"/*
}
# Python itself is not instrumented, so libasan must be loaded before it (LD_PRELOAD), and libstdc++
# right after it: ASan looks up the real __cxa_throw when it starts, and the interpreter does not link
# libstdc++, so without it the first C++ exception thrown in _core fails ASan's check
# "real___cxa_throw != 0" and ends the process with status 1.
PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
expect_caught "heap-buffer-overflow" "$BUILD/sanitizer_canary" heap
expect_caught "runtime error: signed integer overflow" "$BUILD/sanitizer_canary" signed
# The same for the interpreter as the pytest stage below runs it: an out-of-bounds read through ctypes
# goes through ASan's memcpy interceptor.
expect_caught "heap-buffer-overflow" env LD_PRELOAD="$PRELOAD" "$PYTHON" -c \
  "import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; ctypes.string_at(libc.malloc(16), 17)"
say "canaries caught"

say "C++ core test under ASan+UBSan"
core_status=0
"$BUILD/test_core" 2> >(tee "$BUILD/test_core.stderr" >&2) || core_status=$?
wait  # the tee
keep_stderr_reports "$BUILD/test_core.stderr"
fail_on_reports "the C++ core test"
if [ "$core_status" -ne 0 ]; then echo "FAILED: the C++ core test (status $core_status)"; exit 1; fi

# The mpo package from this checkout with the sanitized _core beside it.
PKG="$BUILD/pkg"
rm -rf "$PKG" && mkdir -p "$PKG/mpo"
cp -r "$ROOT/python/mpo/." "$PKG/mpo/"
rm -f "$PKG"/mpo/_core*.so
cp "$BUILD"/_core*.so "$PKG/mpo/"
export LD_PRELOAD="$PRELOAD" PYTHONPATH="$PKG" MPO_SANITIZED=1 MPO_NUM_THREADS=2
# Refuse to "pass" against some other _core (an installed mpo earlier on the path, a stale copy), and
# check that a C++ exception thrown in _core arrives as the Python error it maps to.
"$PYTHON" -c "
import sys, numpy as np, mpo._core as c
if not (c.__file__.startswith('$PKG/') and 'libasan' in open('/proc/self/maps').read()):
    sys.exit('the _core under test is ' + c.__file__ + ', not the sanitized build in $PKG')
try:
    c.entropy(np.ones((2, 2)))
except ValueError:
    pass
else:
    sys.exit('_core.entropy of a 2-D array did not raise ValueError')
" || { fail_on_reports "the first call into _core"; exit 1; }
say "_core tests and the fuzz pass (${FUZZ_SECONDS} s) under ASan+UBSan"
cd "$BUILD"
status=0
MPO_FUZZ_SECONDS=$((FUZZ_SECONDS / 2)) MPO_READER_FUZZ_SECONDS=$((FUZZ_SECONDS - FUZZ_SECONDS / 2)) \
  "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" --capture=sys --rootdir "$ROOT" \
  "$ROOT/tests/test_core_module.py" "$ROOT/tests/fuzz_core.py" "$ROOT/tests/fuzz_readers.py" \
  2> >(tee "$BUILD/pytest.stderr" >&2) || status=$?
wait
# --capture=sys: pytest captures Python's sys.stderr only, so a report written to file descriptor 2 by
# the runtime reaches the stage's stderr (fd capture would hold it, and lose it when the report halts).
keep_stderr_reports "$BUILD/pytest.stderr"
fail_on_reports "the _core tests and the fuzz pass"
if [ "$status" -ne 0 ]; then echo "FAILED: the _core tests and the fuzz pass (pytest status $status)"; exit 1; fi
say "clean: no sanitizer report"
