#!/usr/bin/env bash
# Scale benchmark (benches/scale.rs, issue 8 §8): the real scheduler and one real child machine
# per peer, 10,000 peers in 3 sites pulling one blob over modelled links (shoal_core::sim). No
# root, no network: a release build and a few minutes of one core.
#
#   ./scripts/bench-scale.sh                                   # 10,000 peers, 256 MiB, 1 Gbit/s
#   SCALE_PEERS=2000 SCALE_SIZE_MIB=100 ./scripts/bench-scale.sh
#
# Knobs (see the top of benches/scale.rs): SCALE_PEERS, SCALE_SITES, SCALE_SIZE_MIB,
# SCALE_LINK_MBIT, SCALE_WINDOW_MS, SCALE_STEP_MS; tuning experiments: SCALE_CANDIDATES,
# SCALE_MAX_CHILDREN, SCALE_MAX_PARENTS, SCALE_IN_FLIGHT, SCALE_PER_PARENT, SCALE_URGENT,
# SCALE_SEEDING_MS, SCALE_BUSY_BACKOFF_MS
# (default: the seeding window).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p shoal-core --features sim --bench scale
