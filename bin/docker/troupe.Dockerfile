# syntax=docker/dockerfile:1
# The `troupe` command (sidecar, gateway, send, tail, demo). Build from the repository root:
#   docker build -f bin/docker/troupe.Dockerfile -t ghcr.io/troupe-dev/troupe:0.1.0 .
# FEATURES picks the brokers compiled in; the embedded memory broker is always there.

FROM rust:1.95-slim-bookworm AS build
# Kafka's librdkafka is built from its bundled source by ./configure + make; `make libs`
# builds its C++ library too, and configure looks for python3 to write a linker script.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ python3 pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG FEATURES="nats,amqp,sqs,kafka"
# The caches outlive the build stage, so the binary is copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p troupe-cli --features "$FEATURES" \
 && install -D -m 0755 target/release/troupe /out/troupe

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/troupe /usr/local/bin/troupe
USER nonroot
# mimalloc gives freed pages back to the kernel 10 ms after they empty by default; under
# bursts a hop's buffers are needed again soon after, and the kernel zeroes every page given
# back when it is touched again. Keeping them for a second took 4-9 % off the CPU per
# envelope of the in-memory pipeline (docs/benchmarks.md); idle memory still goes back.
ENV MIMALLOC_PURGE_DELAY=1000
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/troupe"]
CMD ["sidecar"]
