#!/usr/bin/env bash
# Installs kubernetes-validate (offline Kubernetes object validation: the schemas ship in the
# package, so validating needs no cluster and no network) into its own venv, once.
# The deploy manifest test (autoscaler/tests/deploy_manifests.rs) runs it from there.
# Prints the tool's path.
set -euo pipefail

VERSION="1.37.0"
VENV="${TROUPE_K8S_VALIDATE_VENV:-${HOME:-/root}/.cache/troupe/k8s-validate}"
TOOL="$VENV/bin/kubernetes-validate"

installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null
}

if [ "$(installed_version || true)" != "$VERSION" ]; then
  python="$(command -v python3 || true)"
  if [ -z "$python" ]; then
    echo "python3 is needed to install kubernetes-validate" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    # Debian's own python3 has no venv module until python3-venv is installed.
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
      if [ "$(id -u)" -ne 0 ]; then
        echo "cannot create a venv at $VENV: install python3-venv and run again" >&2
        exit 1
      fi
      rm -rf "$VENV"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
      "$python" -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION" >&2
fi

"$TOOL" --version >/dev/null
echo "$TOOL"
