#!/usr/bin/env bash
# Set up napari-sam from scratch in ./.venv (idempotent).
#   bash scripts/setup.sh          the package, its CLI and the napari plugin
#   bash scripts/setup.sh --test   also the test tools, the reference model's
#                                  dependencies and (as root, with apt) Xvfb
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras="qt"
if [[ "${1:-}" == "--test" ]]; then
  extras="qt,testing"
  if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-icccm; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing Xvfb and the X libraries Qt needs (apt)" >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 \
        libxcb-xinerama0 libxkbcommon-x11-0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
        libxcb-xfixes0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null
    else
      echo "setup: warning: Xvfb missing; GUI tests need it (apt-get install xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0)" >&2
    fi
  fi
  if ! command -v dciodvfy >/dev/null 2>&1; then  # the DICOM validator the DICOM SEG test runs
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing dicom3tools (dciodvfy, apt)" >&2
      apt-get update -qq >/dev/null || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null || \
        echo "setup: warning: dicom3tools not installed; the validator test will be skipped" >&2
    else
      echo "setup: note: dciodvfy missing (apt-get install dicom3tools); the validator test will be skipped" >&2
    fi
  fi
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[${extras}]"
# torch's CUDA build brings triton, which segfaults when first imported after
# napari has made a GL context; napari-sam never compiles kernels, so leave it out.
.venv/bin/python -m pip uninstall -q -y triton >/dev/null 2>&1 || true
echo "setup: ready ($(.venv/bin/python -c 'import torch, napari_sam; print("napari-sam", napari_sam.__version__, "torch", torch.__version__)'))" >&2
