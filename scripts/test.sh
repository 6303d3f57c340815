#!/usr/bin/env bash
# The project's test command: installs what the end-to-end tests run (as root, with apt-get, only
# when something is missing), builds the shoal binary, then runs every test in the workspace: unit
# tests and the e2e tests in tests/ (real registry, skopeo, podman, containerd, shoal daemon).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the e2e tests run, as Debian package:command (containerd ships both containerd and ctr).
source scripts/deps.sh
need_commands docker-registry:docker-registry skopeo:skopeo podman:podman containerd:ctr \
  containerd:containerd openssl:openssl util-linux:setpriv util-linux:nsenter iproute2:ip curl:curl \
  docker.io:dockerd systemd:systemd-analyze binutils:strip iproute2:tc procps:sysctl coreutils:sha256sum

# The e2e tests play bad members with test-only faults: only this build has them.
cargo build -p shoal --bin shoal --features fault-injection
# Unit, property and end-to-end tests; benchmarks run only with `cargo bench` (scripts/bench*.sh).
cargo test --workspace --lib --bins --tests --no-fail-fast
