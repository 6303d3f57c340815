#!/usr/bin/env bash
# Mirror benchmark (benches/mirror.rs): direct vs cold vs warm through the daemon on a 256 MiB blob,
# and the daemon's peak RSS under 16 concurrent pulls; optionally one cold pull of a big blob.
# Prints the machine line (CPU, SHA-NI, one core's sha256/BLAKE3 rates), Markdown tables with
# issue 9's targets and a "met?" column, and a closing summary table for benches/RESULTS.md.
#
#   ./scripts/bench.sh
#   SHOAL_BENCH_MIB=64 SHOAL_BENCH_ROUNDS=2 ./scripts/bench.sh   # smaller, quicker
#   SHOAL_BENCH_BIG_MIB=4096 ./scripts/bench.sh                  # adds the 4 GiB flat-RSS row
#
# Knobs: SHOAL_BENCH_MIB (256), SHOAL_BENCH_ROUNDS (3), SHOAL_BENCH_BIG_MIB (0 = skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_commands docker-registry:docker-registry skopeo:skopeo util-linux:setpriv
cargo build --release --bin shoal
SHOAL_BIN="$PWD/target/release/shoal" cargo bench -p shoal-e2e --bench mirror
