#!/usr/bin/env bash
# The project's test command: installs what the end-to-end tests run (as root, with apt-get, only
# when something is missing), builds the shoal binary, then runs every test in the workspace: unit
# tests and the e2e tests in tests/ (real registry, skopeo, podman, containerd, shoal daemon).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> a command it provides.
declare -A provides=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [podman]=podman
  [containerd]=ctr
  [openssl]=openssl
  [util-linux]=setpriv
)
missing=()
for pkg in "${!provides[@]}"; do
  command -v "${provides[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
# containerd ships both containerd and ctr.
command -v containerd >/dev/null 2>&1 || [[ " ${missing[*]} " == *" containerd "* ]] || missing+=(containerd)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: missing ${missing[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The e2e tests play bad members with test-only faults: only this build has them.
cargo build -p shoal --bin shoal --features fault-injection
# Unit, property and end-to-end tests; benchmarks run only with `cargo bench` (scripts/bench*.sh).
cargo test --workspace --lib --bins --tests --no-fail-fast
