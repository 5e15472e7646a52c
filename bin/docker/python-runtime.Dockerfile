# syntax=docker/dockerfile:1
# The Python handler runtime (python/, standard library only), with the example handlers.
# Build from the repository root:
#   docker build -f bin/docker/python-runtime.Dockerfile -t ghcr.io/troupe-dev/troupe-python-runtime:0.1.0 .
# Your own actor image: FROM this one, COPY your modules into /app, set TROUPE_HANDLER.

FROM python:3.12-slim-bookworm
ENV PYTHONPATH=/app:/opt/troupe:/opt/troupe/examples \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY python/troupe_runtime /opt/troupe/troupe_runtime
COPY python/examples /opt/troupe/examples
RUN mkdir -p /app
WORKDIR /app
# The same uid as the sidecar (distroless nonroot), so both can use the socket folder.
USER 65532:65532
ENTRYPOINT ["python3", "-m", "troupe_runtime"]
