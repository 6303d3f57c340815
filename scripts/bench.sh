#!/usr/bin/env bash
# Mirror benchmark: direct vs cold vs warm through the daemon on a 256 MiB blob, and the
# daemon's peak RSS under 16 concurrent pulls. Prints a Markdown table (see benches/mirror.rs).
# SHOAL_BENCH_MIB / SHOAL_BENCH_ROUNDS change the blob size and rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin shoal
SHOAL_BIN="$PWD/target/release/shoal" cargo bench -p shoal-e2e --bench mirror
