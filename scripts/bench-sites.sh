#!/usr/bin/env bash
# Sites benchmark (benches/sites.rs, issue 10 §1): two sites of four nodes in network namespaces,
# a 1 Gbit/s LAN in each, each site behind its own WAN link (50 Mbit/s) to the origin and the
# scheduler. Part A: everyone pulls one image at once (WAN bytes per site, pull times against
# S ÷ W). Part B: site 1 cut off, its nodes pull what a site member holds. Prints the machine line,
# tables and a summary. Needs root (namespaces, tc), docker-registry, skopeo, curl.
#
#   ./scripts/bench-sites.sh
#   SHOAL_BENCH_WAN=20mbit SHOAL_BENCH_MB=96 ./scripts/bench-sites.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cleanup() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^shoalb-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
if [[ $(id -u) -ne 0 ]]; then
  echo "bench-sites.sh: needs root (network namespaces and tc)" >&2
  exit 1
fi
source scripts/deps.sh
need_commands docker-registry:docker-registry skopeo:skopeo util-linux:setpriv curl:curl coreutils:sha256sum \
  iproute2:ip iproute2:tc util-linux:nsenter procps:sysctl
cleanup
cargo build --release --bin shoal
# The benchmark is the `sites` test target run with --bench (the test runs a smaller check).
SHOAL_BIN="$PWD/target/release/shoal" cargo test --release -p shoal-e2e --test sites -- --bench
