#!/usr/bin/env bash
# Build the C++ core test and the _core extension with AddressSanitizer and UndefinedBehaviorSanitizer,
# then run the core test, the _core tests and a time-boxed fuzz pass of the kernels under them.
# Any sanitizer report stops the process with a non-zero status (UBSan halts on its first error).
#
#   tests/sanitize.sh [BUILD_DIR]      (default: build/sanitize beside this checkout; kept between runs
#                                       so that a re-run only recompiles what changed)
#   MPO_FUZZ_SECONDS=60 tests/sanitize.sh   the fuzz pass's time budget (default 40 s)
#
# tests/test_sanitize.py runs this from `python -m pytest`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build/sanitize}"
PYTHON="${PYTHON:-python}"
CXX="${CXX:-g++}"

FLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
configure=(cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=None "-DCMAKE_CXX_COMPILER=$CXX"
           "-DCMAKE_CXX_FLAGS=$FLAGS" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"
           "-DCMAKE_MODULE_LINKER_FLAGS=-fsanitize=address,undefined"
           -DMPO_BUILD_TESTS=ON -DMPO_NATIVE=OFF -DSKBUILD=ON
           "-DPython_EXECUTABLE=$(command -v "$PYTHON")"
           "-Dpybind11_DIR=$("$PYTHON" -m pybind11 --cmakedir)")
if command -v ninja >/dev/null; then configure+=(-G Ninja); fi
mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ] && ! "${configure[@]}" >"$BUILD/configure.log" 2>&1; then
  tail -n 40 "$BUILD/configure.log"; exit 1
fi
if ! cmake --build "$BUILD" --target test_core _core >"$BUILD/build.log" 2>&1; then
  grep -v '^\[' "$BUILD/build.log" | tail -n 60; exit 1
fi

export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1"
echo "== C++ core test under ASan+UBSan"
"$BUILD/test_core"

# The mpo package from this checkout with the sanitized _core beside it. Python itself is not
# instrumented, so libasan must be loaded before it (LD_PRELOAD), and its leak checker stays off
# (the interpreter keeps its allocations to the end).
PKG="$BUILD/pkg"
rm -rf "$PKG" && mkdir -p "$PKG/mpo"
cp -r "$ROOT/python/mpo/." "$PKG/mpo/"
cp "$BUILD"/_core*.so "$PKG/mpo/"
ASAN_LIB="$("$CXX" -print-file-name=libasan.so)"
echo "== _core tests and the kernel fuzz pass under ASan+UBSan"
cd "$BUILD"
LD_PRELOAD="$ASAN_LIB" PYTHONPATH="$PKG" MPO_SANITIZED=1 MPO_NUM_THREADS=2 \
  "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" --rootdir "$ROOT" \
  "$ROOT/tests/test_core_module.py" "$ROOT/tests/fuzz_core.py"
