#!/usr/bin/env bash
# Builds the Shoal container image (deploy/Containerfile) from a shoal binary of this repository,
# with no network and no base image: the build context holds the binary, the shared libraries
# `ldd` lists for it, the dynamic loader, the system's CA certificates and a passwd naming the
# non-root user (65532) the image runs as.
#
#   scripts/image.sh context DIR            lay out the build context in DIR and stop
#   scripts/image.sh build [--tag T]        build it with the docker (DOCKER_HOST) at hand
#   scripts/image.sh verify                 build it offline on a throwaway dockerd and run it
#
# Options: --binary PATH (default: target/release/shoal if built, else target/debug/shoal),
# --tag TAG (default shoal:dev).
#
# `verify` starts its own dockerd (Debian's docker.io; /usr/bin/docker as the client) in a network
# namespace that has only `lo`, with iptables, the bridge and masquerading off and every state
# directory under one temp dir; builds the image there; runs `shoal --version` and then the daemon
# (UID 65532, every capability dropped, read-only root file system, --network none) and checks
# that /healthz answers `ok` inside the container's own network namespace. Whatever happens, it
# removes the containers, stops dockerd (and the containerd it started), unmounts what they left,
# deletes the namespace and the temp dir. Needs root (network namespaces, dockerd).
set -euo pipefail
cd "$(dirname "$0")/.."

UID_GID=65532
tag=shoal:dev
binary=
cmd=${1:-}
[[ $# -gt 0 ]] && shift
dir_arg=
if [[ $cmd == context ]]; then
  dir_arg=${1:?usage: scripts/image.sh context DIR}
  shift
fi
while [[ $# -gt 0 ]]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z $binary ]]; then
  binary=target/debug/shoal
  [[ -x target/release/shoal ]] && binary=target/release/shoal
fi

say() { echo "image.sh: $*" >&2; }

# Copies FILE (following symlinks) to ROOT at the same path.
copy_into() {
  local root=$1 file=$2
  mkdir -p "$root$(dirname "$file")"
  cp -L "$file" "$root$file"
}

# Lays out the build context in $1: Containerfile, rootfs/, data/.
make_context() {
  local ctx=$1 root=$1/rootfs lib
  [[ -x $binary ]] || { say "no shoal binary at $binary (cargo build --release -p shoal --bin shoal)"; exit 1; }
  mkdir -p "$root/usr/local/bin" "$root/etc/shoal" "$root/tmp" "$ctx/data"
  chmod 1777 "$root/tmp"
  cp deploy/Containerfile "$ctx/Containerfile"
  # Debug information is most of a debug build's size; the image does not need it.
  strip --strip-debug -o "$root/usr/local/bin/shoal" "$binary" 2>/dev/null || cp "$binary" "$root/usr/local/bin/shoal"
  chmod 0755 "$root/usr/local/bin/shoal"
  # Every shared library the binary loads, and the loader itself (the absolute path ldd prints
  # last, e.g. /lib64/ld-linux-x86-64.so.2). A static (musl) binary lists none.
  for lib in $(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true); do
    copy_into "$root" "$lib"
  done
  for lib in /etc/ssl/certs/ca-certificates.crt; do
    [[ -f $lib ]] && copy_into "$root" "$lib"
  done
  printf 'root:x:0:0:root:/:/sbin/nologin\nshoal:x:%s:%s:shoal:/var/lib/shoal:/sbin/nologin\n' $UID_GID $UID_GID >"$root/etc/passwd"
  printf 'root:x:0:\nshoal:x:%s:\n' $UID_GID >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp deploy/shoal.toml "$root/etc/shoal/shoal.toml"
}

case $cmd in
  context)
    make_context "$dir_arg"
    say "build context in $dir_arg"
    exit 0
    ;;
  build)
    ctx=$(mktemp -d -t shoal-image-XXXXXX)
    trap 'rm -rf "$ctx"' EXIT
    make_context "$ctx"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" -f "$ctx/Containerfile" "$ctx"
    say "built $tag from $binary"
    exit 0
    ;;
  verify) ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

# ---- verify: a throwaway dockerd, offline ----
[[ $(id -u) -eq 0 ]] || { say "verify needs root (network namespace, dockerd)"; exit 1; }
DOCKER=/usr/bin/docker
command -v dockerd >/dev/null && [[ -x $DOCKER ]] || { say "needs Debian's docker.io (dockerd, /usr/bin/docker)"; exit 1; }
work=$(mktemp -d -t shoal-image-verify-XXXXXX)
netns=shoal-image-$$
dockerd_pid=

cleanup() {
  local rc=$?
  set +e
  if [[ -n $dockerd_pid ]] && kill -0 "$dockerd_pid" 2>/dev/null; then
    in_ns $DOCKER -H "unix://$work/docker.sock" rm -f -v shoal-verify-daemon shoal-verify-version >/dev/null 2>&1
    kill -TERM "$dockerd_pid"
    for _ in $(seq 1 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
  fi
  # The containerd dockerd started, should dockerd have died without stopping it.
  local cpid
  cpid=$(cat "$work/exec/containerd/containerd.pid" 2>/dev/null)
  [[ -n $cpid ]] && kill -KILL "$cpid" 2>/dev/null
  # Mounts left under the temp dir (overlay layers, shm, the netns' own), deepest first.
  awk -v w="$work" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  ip netns del "$netns" 2>/dev/null
  if [[ $rc -ne 0 ]]; then
    say "FAILED (exit $rc); the end of dockerd's log:"
    tail -20 "$work/dockerd.log" >&2
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { nsenter --net="/run/netns/$netns" "$@"; }
dock() { in_ns $DOCKER -H "unix://$work/docker.sock" "$@"; }

ip netns add "$netns"
in_ns ip link set lo up
make_context "$work/context"
mkdir -p "$work/data" "$work/exec"
start=$(date +%s%N)
nsenter --net="/run/netns/$netns" dockerd \
  --host "unix://$work/docker.sock" --data-root "$work/data" --exec-root "$work/exec" \
  --pidfile "$work/dockerd.pid" --iptables=false --ip-masq=false --bridge=none \
  --log-level warn >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 300); do
  dock version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log" >&2; say "dockerd exited"; exit 1; }
  sleep 0.1
done
dock version >/dev/null || { tail -40 "$work/dockerd.log" >&2; say "dockerd did not answer within 30 s"; exit 1; }
say "dockerd up in $((($(date +%s%N) - start) / 1000000)) ms (storage driver $(dock info -f '{{.Driver}}'))"

DOCKER_BUILDKIT=0 dock build -q -t "$tag" -f "$work/context/Containerfile" "$work/context" >/dev/null
size=$(dock image inspect -f '{{.Size}}' "$tag")
user=$(dock image inspect -f '{{.Config.User}}' "$tag")
say "built $tag from $binary: $size bytes, user $user"
[[ $user == "$UID_GID:$UID_GID" ]] || { say "the image runs as '$user', want $UID_GID:$UID_GID"; exit 1; }

hardened=(--network none --cap-drop ALL --read-only --security-opt no-new-privileges)
version=$(dock run --name shoal-verify-version "${hardened[@]}" "$tag" --version)
dock rm shoal-verify-version >/dev/null
[[ $version == "shoal "* ]] || { say "shoal --version printed '$version'"; exit 1; }
say "docker run $tag --version: $version"

# The daemon with the image's default command and config, its data on a volume the image seeds
# (owned by 65532).
dock run -d --name shoal-verify-daemon "${hardened[@]}" -v shoal-verify-data:/var/lib/shoal "$tag" >/dev/null
pid=$(dock inspect -f '{{.State.Pid}}' shoal-verify-daemon)
healthz=
for _ in $(seq 1 200); do
  healthz=$(nsenter --net="/proc/$pid/ns/net" curl -fsS --max-time 2 http://127.0.0.1:65003/healthz 2>/dev/null) && break
  [[ $(dock inspect -f '{{.State.Running}}' shoal-verify-daemon) == true ]] || break
  sleep 0.1
done
if [[ $healthz != ok* ]]; then
  dock logs shoal-verify-daemon >&2 || true
  say "the daemon in the container did not answer /healthz (got '$healthz')"
  exit 1
fi
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
[[ $uid == "$UID_GID" && $caps == 0000000000000000 ]] || { say "daemon runs as uid $uid with caps $caps"; exit 1; }
metrics=$(nsenter --net="/proc/$pid/ns/net" curl -fsS --max-time 2 http://127.0.0.1:65003/metrics | grep -c '^# TYPE shoal_')
say "daemon in the container: /healthz '$healthz', uid $uid, CapEff $caps, $metrics metric families on /metrics"
echo "image ok: $tag ($size bytes), $version, daemon healthy as uid $uid with no capabilities"
