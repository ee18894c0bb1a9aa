#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run (CI runs it after the test suite):
#   1. builds vgcore._core and the C++ tests with -DVGCORE_SANITIZE=ON into build/asan
#      (tools/devbuild.sh; cmake, ninja and pybind11 must be importable/on PATH),
#   2. runs the C++ tests (ctest) under the sanitizers, leak checking included,
#   3. runs pytest over tests/ with the sanitized extension, the ASan runtime preloaded into the
#      uninstrumented Python (tests marked `no_sanitizer` are skipped, see tests/conftest.py).
# Any ASan report or UB stops the run with a stack and a non-zero status.
#   tools/sanitize.sh [pytest args...]      e.g. tools/sanitize.sh tests/test_spectrum.py -x
# Environment: PYTHON (interpreter), VGCORE_ASAN_DIR (build dir), VGCORE_WERROR=ON (-Werror),
# VGCORE_SANITIZE_SKIP_CTEST=1 / VGCORE_SANITIZE_SKIP_PYTEST=1 (one half only).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bdir="${VGCORE_ASAN_DIR:-$root/build/asan}"
py="${PYTHON:-python}"
cd "$root"

echo "== sanitized build ($bdir)"
VGCORE_BUILD_DIR="$bdir" VGCORE_BUILD_TESTS=ON \
  VGCORE_CMAKE_ARGS="-DVGCORE_SANITIZE=ON -DVGCORE_WERROR=${VGCORE_WERROR:-OFF}" \
  "$root/tools/devbuild.sh" asan >/dev/null

# UB is fatal (also compiled in: -fno-sanitize-recover=undefined). malloc returns NULL instead of
# aborting on huge requests, so the library's MemoryError paths run as in production.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
asan_common="allocator_may_return_null=1:check_initialization_order=1:strict_string_checks=1"

if [ "${VGCORE_SANITIZE_SKIP_CTEST:-0}" != 1 ]; then
  echo "== C++ tests under ASan + UBSan (leaks checked)"
  ASAN_OPTIONS="detect_leaks=1:$asan_common${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
    ctest --test-dir "$bdir" --output-on-failure
fi

if [ "${VGCORE_SANITIZE_SKIP_PYTEST:-0}" != 1 ]; then
  # The runtimes the module was linked against, by path. CPython is not instrumented, so ASan
  # must be preloaded (it has to come first); libstdc++ with it, or ASan's __cxa_throw
  # interceptor finds no real one at start-up and the first C++ exception aborts.
  so="$(ls "$bdir"/_core*.so)"
  libasan="$(ldd "$so" | awk '/libasan\.so/ {print $3}')"
  libstdcxx="$(ldd "$so" | awk '/libstdc\+\+\.so/ {print $3}')"
  if [ -z "$libasan" ] || [ -z "$libstdcxx" ]; then
    echo "sanitize.sh: $so does not link libasan and libstdc++ (ldd):" >&2
    ldd "$so" >&2
    exit 1
  fi
  export LD_PRELOAD="$libasan $libstdcxx"
  export PYTHONPATH="$bdir/pkg${PYTHONPATH:+:$PYTHONPATH}"
  # CPython leaks by design (interned objects, module state): leak checking off here.
  export ASAN_OPTIONS="detect_leaks=0:$asan_common${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export VGCORE_SANITIZED=1
  echo "== pytest under ASan + UBSan, with:"
  echo "   LD_PRELOAD='$LD_PRELOAD' PYTHONPATH='$PYTHONPATH'"
  echo "   ASAN_OPTIONS='$ASAN_OPTIONS' UBSAN_OPTIONS='$UBSAN_OPTIONS'"
  # The sanitized package must be the one imported, not an installed vgcore.
  "$py" -c "import sys, vgcore; sys.exit(not vgcore._core.__file__.startswith('$bdir/'))" || {
    echo "sanitize.sh: the sanitized vgcore._core is not the one imported" >&2
    exit 1
  }
  "$py" -m pytest -p no:cacheprovider -q "${@:-tests}"
fi
