#!/usr/bin/env bash
# An aarch64 Python 3.11 with onnxruntime 1.24 and latpred's dependencies, run under qemu-user: functional only
# (timings under emulation mean nothing). Idempotent: a finished environment is reused.
#
#   tests/aarch64/build_env.sh [DIR]        DIR defaults to $LATPRED_AARCH64_DIR or ~/.cache/latpred-aarch64
#
# Debian's qemu-user-static and debootstrap (first stage only: it fetches and unpacks Debian 12's arm64
# python3.11, no chroot), plus aarch64 wheels from PyPI (pip --platform ... --only-binary=:all: --target).
# onnxruntime 1.24.x starts under Debian 12's qemu 7.2; 1.28 and later crash at import.
set -euo pipefail

DIR="${1:-${LATPRED_AARCH64_DIR:-$HOME/.cache/latpred-aarch64}}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ORT_VERSION="1.24.4"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# What the environment holds: rebuilt when latpred's dependencies or the runtime change.
DEPS="$("$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join(sorted(project["dependencies"])))
EOF
)"
STAMP="onnxruntime==$ORT_VERSION libgomp1 $DEPS"
if [ -f "$DIR/.ready" ] && [ "$(cat "$DIR/.ready")" = "$STAMP" ]; then
    echo "$DIR"
    exit 0
fi

if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq || true) >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap >/dev/null
    else
        echo "needs qemu-user-static and debootstrap (apt-get install qemu-user-static debootstrap)" >&2
        exit 1
    fi
fi

rm -rf "$DIR"
mkdir -p "$DIR"
# First stage only: fetch and unpack Debian's arm64 base and Python 3.11 (no chroot, nothing runs as arm64 here).
debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11,libgomp1 bookworm "$DIR/rootfs" "$MIRROR" \
    > "$DIR/debootstrap.log" 2>&1 || { tail -5 "$DIR/debootstrap.log" >&2; exit 1; }
for deb in "$DIR"/rootfs/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$DIR/rootfs"
done
rm -f "$DIR"/rootfs/var/cache/apt/archives/*.deb

# aarch64 wheels of the runtime and of latpred's dependencies (latpred itself runs from the checkout).
# shellcheck disable=SC2086
"$PYTHON" -m pip install -q --disable-pip-version-check --target "$DIR/site" --implementation cp \
    --python-version 3.11 --only-binary=:all: --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_28_aarch64 "onnxruntime==$ORT_VERSION" sympy $DEPS \
    > "$DIR/pip.log" 2>&1 || { tail -5 "$DIR/pip.log" >&2; exit 1; }

# It runs: aarch64 Python imports onnxruntime under qemu.
qemu-aarch64-static -L "$DIR/rootfs" -E "PYTHONPATH=$DIR/site" "$DIR/rootfs/usr/bin/python3.11" \
    -c "import onnxruntime, platform; assert platform.machine() == 'aarch64'; print(onnxruntime.__version__)" \
    > "$DIR/check.log" 2>&1 || { cat "$DIR/check.log" >&2; exit 1; }
echo "$STAMP" > "$DIR/.ready"
echo "$DIR"
