# syntax=docker/dockerfile:1
# troupe-gpu-worker: serves one actor's queue with a TorchScript model on libtorch (CUDA),
# batching envelopes dynamically. Build from the repository root:
#   docker build -f bin/docker/gpu-worker.Dockerfile -t ghcr.io/troupe-dev/troupe-gpu-worker:0.1.0 .
# FEATURES picks the brokers compiled in; keep `torch,cuda` (without `cuda` the binary sees
# no GPU). libtorch and its CUDA libraries come from the PyPI torch wheel: the image is
# several GB and needs an NVIDIA driver that supports CUDA 13.0 (580 or newer).

# tch 0.26 pins libtorch 2.13.0; its PyPI wheel is built for CUDA 13.0.
ARG TORCH_VERSION=2.13.0
# The venv's site-packages, at the same absolute path in both stages: the binary's rpath
# points at torch/lib in it, and libtorch finds its CUDA libraries through RPATHs relative
# to itself ($ORIGIN/../../nvidia/*/lib). bookworm's python3 is 3.11, hence the folder name.
ARG TORCH_SITE=/opt/torch/lib/python3.11/site-packages

FROM rust:1.95-slim-bookworm AS build
ARG TORCH_VERSION
ARG TORCH_SITE
# Kafka's librdkafka is built from its bundled source by ./configure + make; `make libs`
# builds its C++ library too, and configure looks for python3 to write a linker script.
# torch-sys compiles its C++ wrapper against libtorch's headers with g++; python3-venv
# installs the wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ python3 pkg-config libssl-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The full install: torch's CUDA build and its nvidia-* wheels (cuDNN, cuBLAS, NCCL, ...),
# about 5 GB. Before `COPY . .`, so a source change does not fetch it again. The test fails
# the build if the Python version, and with it TORCH_SITE, changed.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/torch \
 && /opt/torch/bin/pip install --upgrade pip \
 && /opt/torch/bin/pip install "torch==$TORCH_VERSION" \
 && test -f "$TORCH_SITE/torch/lib/libtorch_cuda.so"
# torch-sys links libtorch from here; build.rs turns its lib folder into the binary's rpath.
ENV LIBTORCH=$TORCH_SITE/torch
WORKDIR /src
COPY . .
ARG FEATURES="torch,cuda,nats,amqp,sqs,kafka"
# The caches outlive the build stage, so the binary is copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p troupe-gpu-worker --features "$FEATURES" \
 && install -D -m 0755 target/release/troupe-gpu-worker /out/troupe-gpu-worker

# The CUDA 13.0 release that torch 2.13.0 pins (cuda-toolkit==13.0.3). The image's own
# settings (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_CUDA) make
# the NVIDIA container toolkit mount the driver and refuse one too old for CUDA 13.0.
# Not a -cudnn- variant: torch's cuDNN wheel lacks a sub-library that cuDNN then loads by
# name from the system, and a system cuDNN of another version makes convolutions fail.
FROM nvidia/cuda:13.0.3-runtime-ubuntu24.04
ARG TORCH_SITE
# OpenSSL for Kafka's TLS (librdkafka links it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3t64 \
 && rm -rf /var/lib/apt/lists/*
# libtorch (no Python files, no headers) and the CUDA libraries it loads, where the build
# stage had them.
COPY --from=build $TORCH_SITE/torch/lib $TORCH_SITE/torch/lib
COPY --from=build $TORCH_SITE/nvidia $TORCH_SITE/nvidia
COPY --from=build /out/troupe-gpu-worker /usr/local/bin/troupe-gpu-worker
# Libraries opened by name at run time (cuDNN's sub-libraries, NVRTC's builtins) come from
# the wheels too, not from this image's own CUDA copies; the base image's folders (where
# older container toolkits mount the driver) stay after them.
ENV LD_LIBRARY_PATH=$TORCH_SITE/nvidia/cu13/lib:$TORCH_SITE/nvidia/cudnn/lib:$TORCH_SITE/nvidia/cusparselt/lib:$TORCH_SITE/nvidia/nccl/lib:$TORCH_SITE/nvidia/nvshmem/lib:$LD_LIBRARY_PATH
# Every library the binary links resolves in this image, except the driver's (libcuda,
# libnvidia-*), which the container toolkit mounts when the container starts.
RUN missing="$(ldd /usr/local/bin/troupe-gpu-worker | grep 'not found' | grep -Ev 'libcuda\.so|libnvidia-' || true)" \
 && if [ -n "$missing" ]; then echo "unresolved libraries:"; echo "$missing"; exit 1; fi
# The same uid as the other Troupe images (distroless nonroot); numeric, so Kubernetes can
# check runAsNonRoot without a passwd entry.
USER 65532:65532
# /metrics, /healthz, /readyz (ready once the model is loaded and warmed up)
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/troupe-gpu-worker"]
