#!/usr/bin/env bash
# Swarm benchmark (benches/swarm.rs): N daemons in network namespaces with capped links pulling one
# image at once, P2P vs straight from the origin, once per link rate; plus the raw peer rate and the
# parent's and child's CPU-seconds per GB on loopback. Prints the machine line (CPU, SHA-NI, one
# core's sha256/BLAKE3 rates), tables with issue 9's targets and a "met?" column, and a closing
# summary table for benches/RESULTS.md. Needs root (network namespaces, tc), docker-registry,
# skopeo, curl; iperf3 is used if present.
#
#   ./scripts/bench-swarm.sh                      # defaults: 8 nodes, 200mbit, 200 MB
#   SHOAL_BENCH_RATES=200mbit,100mbit ./scripts/bench-swarm.sh   # both of issue 9's rates
#   SHOAL_BENCH_NODES=4 SHOAL_BENCH_MB=64 ./scripts/bench-swarm.sh
#
# Other knobs: SHOAL_BENCH_RATE (one rate, when SHOAL_BENCH_RATES is unset), SHOAL_BENCH_PARALLEL,
# SHOAL_BENCH_DAEMON_ARGS, SHOAL_BENCH_P2P_MB, SHOAL_BENCH_SWARM, SHOAL_BENCH_IPERF,
# SHOAL_BENCH_DIRECT, SHOAL_BENCH_VERIFY, SHOAL_BENCH_KEEP, SHOAL_BENCH_PERF (see the top of
# benches/swarm.rs). The loopback part alone needs no root: `SHOAL_BENCH_SWARM=0 ./scripts/bench-swarm.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=shoalb-

cleanup() {
  # The benchmark removes what it creates; this catches a run that was killed.
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${PREFIX}" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
      kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT

if [[ ${SHOAL_BENCH_SWARM:-1} != 0 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bench-swarm.sh: the namespace part needs root (network namespaces and tc); SHOAL_BENCH_SWARM=0 skips it" >&2
    exit 1
  fi
fi
source scripts/deps.sh
need_commands docker-registry:docker-registry skopeo:skopeo util-linux:setpriv curl:curl coreutils:sha256sum
if [[ ${SHOAL_BENCH_SWARM:-1} != 0 ]]; then
  need_commands iproute2:ip iproute2:tc util-linux:nsenter iperf3:iperf3
fi

cleanup
cargo build --release --bin shoal

# Run in the background so a signal reaches the traps at once; forward it to the benchmark (the
# child of cargo), which then stops its processes and deletes its namespaces before exiting.
SHOAL_BIN="$PWD/target/release/shoal" cargo bench -p shoal-e2e --bench swarm &
CARGO_PID=$!
forward() {
  local sig=$1 pid children
  children=$(pgrep -P "$CARGO_PID" 2>/dev/null || true)
  if [[ -n $children ]]; then
    for pid in $children; do kill -"$sig" "$pid" 2>/dev/null || true; done
  else
    kill -"$sig" "$CARGO_PID" 2>/dev/null || true
  fi
  wait "$CARGO_PID" 2>/dev/null || true
}
trap 'forward INT; exit 130' INT
trap 'forward TERM; exit 143' TERM
wait "$CARGO_PID"
