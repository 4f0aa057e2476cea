#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests (which need root and drive the
# real peers: runc, crun, containerd, docker-registry).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
