#!/usr/bin/env bash
# Installs (as root, with apt-get) the Debian packages that provide the given commands, for those
# commands that are missing. Sourced by test.sh and the benchmark scripts:
#
#   source scripts/deps.sh
#   need_commands docker-registry:docker-registry skopeo:skopeo   # package:command ...

need_commands() {
  local missing=() pair pkg cmd
  for pair in "$@"; do
    pkg=${pair%%:*}
    cmd=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
      missing+=("$pkg")
    fi
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$(basename "$0"): missing ${missing[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "$(basename "$0"): installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
