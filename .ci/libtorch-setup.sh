#!/usr/bin/env bash
# Installs libtorch for building and running the GPU worker (feature `torch`) on CPU, once:
# the PyPI torch wheel (tch 0.26 pins torch 2.13.0) with only the two CUDA libraries its
# CPU library links against (libcudart, libcupti), not its 2 GB of CUDA dependencies.
# Python cannot import torch from this install; Rust links libtorch from DIR/torch/lib.
# Prints the LIBTORCH directory on its last line.
set -euo pipefail

TORCH_VERSION="2.13.0"
# The versions torch 2.13.0 pins through cuda-toolkit==13.0.3[cudart,cupti].
CUDA_RUNTIME="nvidia-cuda-runtime==13.0.96.*"
CUDA_CUPTI="nvidia-cuda-cupti==13.0.85.*"
DIR="${TROUPE_LIBTORCH_DIR:-${HOME:-/root}/.cache/troupe/libtorch-$TORCH_VERSION}"

if [ ! -f "$DIR/.complete" ]; then
  python="$(command -v python3 || true)"
  if [ -z "$python" ]; then
    echo "python3 with pip is needed to fetch libtorch from PyPI" >&2
    exit 1
  fi
  rm -rf "$DIR"
  echo "installing libtorch $TORCH_VERSION (PyPI wheel, CPU use) into $DIR" >&2
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$DIR" \
    "torch==$TORCH_VERSION" "$CUDA_RUNTIME" "$CUDA_CUPTI" >&2
  touch "$DIR/.complete"
fi
echo "$DIR/torch"
