#!/usr/bin/env bash
# Developer build without installing: compiles vgcore._core into build/dev-NAME and assembles
# an importable package there (symlinks to python/vgcore + the fresh extension), so several
# people (or agents) can build and test the same tree side by side.
#   tools/devbuild.sh NAME   ->   export PYTHONPATH=$PWD/build/dev-NAME/pkg
# Environment: VGCORE_BUILD_TESTS=ON (also the C++ tests), VGCORE_CMAKE_ARGS="-DX=Y ..." (more
# CMake options), VGCORE_BUILD_DIR (instead of build/dev-NAME), PYTHON (the interpreter).
set -euo pipefail
name="${1:-default}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bdir="${VGCORE_BUILD_DIR:-$root/build/dev-$name}"
py="${PYTHON:-python}"
cmake -S "$root" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$py")" -DSKBUILD_PROJECT_VERSION=0.1.0 \
  -DVGCORE_BUILD_TESTS="${VGCORE_BUILD_TESTS:-OFF}" ${VGCORE_CMAKE_ARGS:-} >/dev/null
cmake --build "$bdir" -j2
pkg="$bdir/pkg/vgcore"
rm -rf "$bdir/pkg"
mkdir -p "$pkg"
for f in "$root"/python/vgcore/*; do
  case "$f" in *.so) continue ;; esac
  ln -s "$f" "$pkg/$(basename "$f")"
done
cp "$bdir"/_core*.so "$pkg/"
echo "export PYTHONPATH=$bdir/pkg"
