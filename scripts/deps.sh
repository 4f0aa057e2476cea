#!/usr/bin/env bash
# Install the Debian packages Orca's build, demo and tests need (idempotent; run as root).
set -euo pipefail
PKGS=(busybox-static runc crun containerd docker-registry skopeo umoci iptables
      protobuf-compiler libseccomp-dev pkg-config gcc procps docker.io bsdutils docker-compose
      iproute2 apache2-utils openssl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
# docker-py, the Python client the engine tests drive orcad with.
if ! python3 -c 'import docker' >/dev/null 2>&1; then
  python3 -m pip install -q docker
fi
