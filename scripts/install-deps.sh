#!/usr/bin/env bash
# Installs everything Crest, its tests, its demo and its benchmarks use, from Debian packages.
# Idempotent: when every package is present at a good version it only checks and exits in about a second.
#
# Debian 12 (bookworm) lacks a CRIU that works on current kernels (3.17 fails on the vDSO, 4.1 hangs),
# so Debian forky is added at a low pin and only the packages that need it are taken from there:
# criu/libcriu (>= 4.2), checkpointctl, containerd 2.1 (the CRI peer used by tests and benchmarks;
# it brings forky's runc with it), podman 5.8 (the cross-engine oracle) and the Go source packages that carry
# the protos Crest compiles.
set -euo pipefail

CRIU_MIN=4.2
CONTAINERD_MIN=2.1
PODMAN_MIN=5.8
CRUN_MIN=1.20
EROFS_MIN=1.7

# From Debian 12 itself.
BASE_PACKAGES=(
  conmon iptables iproute2 containernetworking-plugins catatonit busybox-static
  docker-registry skopeo apache2-utils jq tmux util-linux procps make
  systemd  # systemd-analyze verifies the packaged unit in the package test
  prometheus  # a real Prometheus scrapes crestd in the metrics test (policy-rc.d keeps its service from starting)
  clang lld zlib1g-dev  # the Native AOT publish of crest and crestd: ILC's native link (clang driving lld) and its zlib
)
# From forky, each for a reason named above. Podman 5.8 is the compatibility oracle of the cross-engine tests;
# without recommends it brings 12 packages (netavark, libseccomp2 2.6, libgpgme45, libsubid6 and shadow's
# passwd/uidmap/login.defs 4.20 among them) and keeps Debian 12's conmon, containers-common and skopeo.
# Nothing uses buildah (Crest builds checkpoint images itself), so it is not installed. netavark's bridge networks
# would need nftables' nft, which is not installed: the tests run Podman containers with --network none.
# crun too: Debian 12's 1.8 has no `crun features`, no recursive read-only mounts and runs a terminal exec with stdin
# badly; forky's (1.28) brings one library with it (libblake3).
# erofs-utils: a restore from a plain archive indexes it with mkfs.erofs --tar=i (1.7 or later; Debian 12 has 1.5) and
# mounts the index, so CRIU reads the page images where the archive holds them; forky's 1.9 brings 11 libraries
# (curl, OpenSSL 3.6, libxml2 for its remote sources, which Crest does not use).
FORKY_PACKAGES=(criu libcriu-dev checkpointctl containerd runc crun podman erofs-utils)
# Source-only Go packages that ship the .proto files Crest compiles at build time.
FORKY_PROTO_PACKAGES=(
  golang-github-kubernetes-cri-api-dev
  golang-github-checkpoint-restore-go-criu-dev
)

CRI_API_PROTO=/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto
CRIU_RPC_PROTO=/usr/include/criu/rpc.proto

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# version_ge A B: true when version A >= B (dpkg ordering).
version_ge() { dpkg --compare-versions "$1" ge "$2"; }

installed_version() {
  dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1=="installed"{print $2}'
}

criu_version() { criu --version 2>/dev/null | awk '/^Version:/{print $2}'; }
containerd_version() { containerd --version 2>/dev/null | awk '{print $3}' | sed -e 's/^v//' -e 's/[+~-].*//'; }
podman_version() { podman --version 2>/dev/null | awk '{print $3}'; }
crun_version() { crun --version 2>/dev/null | awk 'NR==1{print $3}'; }
erofs_version() { mkfs.erofs --version 2>/dev/null | awk 'NR==1{print $3}'; }

missing_packages() {
  local p
  for p in "$@"; do
    [ -n "$(installed_version "$p")" ] || printf '%s ' "$p"
  done
}

everything_present() {
  [ -z "$(missing_packages "${BASE_PACKAGES[@]}" "${FORKY_PACKAGES[@]}" "${FORKY_PROTO_PACKAGES[@]}")" ] || return 1
  local v
  v=$(criu_version); [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  v=$(containerd_version); [ -n "$v" ] && version_ge "$v" "$CONTAINERD_MIN" || return 1
  v=$(podman_version); [ -n "$v" ] && version_ge "$v" "$PODMAN_MIN" || return 1
  v=$(crun_version); [ -n "$v" ] && version_ge "$v" "$CRUN_MIN" || return 1
  v=$(erofs_version); [ -n "$v" ] && version_ge "$v" "$EROFS_MIN" || return 1
  [ -f "$CRI_API_PROTO" ] && [ -f "$CRIU_RPC_PROTO" ]
}

add_forky_source() {
  local src=/etc/apt/sources.list.d/forky.sources pin=/etc/apt/preferences.d/forky
  if [ ! -f "$src" ]; then
    [ -f /etc/apt/sources.list.d/debian.sources ] \
      || die "no /etc/apt/sources.list.d/debian.sources to derive the forky source from; add a forky source by hand"
    # The first stanza of the machine's own Debian source, with the suite changed: no host is named here.
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
      | sed -e 's/^Suites:.*/Suites: forky/' -e '/^#/d' > "$src"
    log "added $src"
  fi
  if [ ! -f "$pin" ]; then
    printf 'Package: *\nPin: release n=forky\nPin-Priority: 100\n' > "$pin"
    log "pinned forky low in $pin"
  fi
}

install_cni_default_network() {
  # A default pod network, as Podman ships one, so a fresh node has NetworkReady=true.
  local dir=/etc/cni/net.d
  mkdir -p "$dir"
  # Podman 4's package dropped its own 87-podman-bridge.conflist here (dpkg removes it on the upgrade to Podman 5,
  # which uses netavark and writes nothing under /etc/cni). Podman is installed only as a test oracle, so that
  # file never counts as the operator's network.
  local others
  others=$(find "$dir" -maxdepth 1 \( -name '*.conflist' -o -name '*.conf' \) ! -name 87-podman-bridge.conflist | head -n 1)
  if [ -z "$others" ]; then
    cat > "$dir/87-crest-bridge.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "crest",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "crest0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.87.0.0/16" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
JSON
    log "installed the default pod network $dir/87-crest-bridge.conflist (bridge crest0, 10.87.0.0/16)"
  fi
}

# crun refuses a hybrid cgroup host whose v2 hierarchy holds any controller ("cgroups in hybrid mode not
# supported, drop all controllers from cgroupv2", whatever the cgroup manager or the spec). systemd's hybrid
# layout binds every controller to v1; this VM's init leaves hugetlb on v2. Binding each such controller to a v1
# hierarchy of its own, as systemd would, lets crun run here; runc handles either layout. The kernel moves a
# controller only while no v2 cgroup enables it (subtree_control); a mount does not outlive a reboot, so this
# runs on every call.
bind_v2_controllers_to_v1() {
  local cg=/sys/fs/cgroup unified=/sys/fs/cgroup/unified c
  [ "$(stat -f -c %T "$cg" 2>/dev/null)" = tmpfs ] || return 0
  [ "$(stat -f -c %T "$unified" 2>/dev/null)" = cgroup2fs ] || return 0
  for c in $(cat "$unified/cgroup.controllers"); do
    if mkdir -p "$cg/$c" && mount -t cgroup -o "$c" cgroup "$cg/$c"; then
      log "bound the $c cgroup controller to a v1 hierarchy at $cg/$c (crun refuses hybrid hosts with controllers on v2)"
    else
      rmdir "$cg/$c" 2>/dev/null || true
      log "warning: could not bind the $c cgroup controller to v1 ($cg read-only, or a v2 cgroup enables it); crun will refuse this host and its tests skip"
    fi
  done
}

# Post-copy migration: CRIU's page server sizes its pipe to 3,354,624 bytes with F_SETPIPE_SZ, which a root without
# CAP_SYS_RESOURCE (containers, some VMs) may do only up to fs.pipe-max-size; CRIU 4.2 ignores the failure and its
# page server then fails at the first page. Raised to 4 MiB (never lowered), and kept across reboots in sysctl.d.
PIPE_MAX_WANTED=4194304
raise_pipe_max_size() {
  local now
  now=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
  if [ ! -f /etc/sysctl.d/60-crest.conf ] && [ -d /etc/sysctl.d ]; then
    printf '# Crest: CRIU page server for post-copy migration (3,354,624-byte pipes)\nfs.pipe-max-size = %s\n' "$PIPE_MAX_WANTED" > /etc/sysctl.d/60-crest.conf
  fi
  if [ "$now" -lt "$PIPE_MAX_WANTED" ]; then
    if echo "$PIPE_MAX_WANTED" > /proc/sys/fs/pipe-max-size 2>/dev/null; then
      log "fs.pipe-max-size raised from $now to $PIPE_MAX_WANTED (CRIU's page server for post-copy migration)"
    else
      log "warning: fs.pipe-max-size is $now and cannot be raised here; post-copy migration is refused on this node (crest info says why)"
    fi
  fi
}

check_versions() {
  local v
  v=$(criu_version)
  [ -n "$v" ] || die "criu is not installed or does not run ('criu --version' failed)"
  version_ge "$v" "$CRIU_MIN" || die "criu $v is too old: Crest needs CRIU >= $CRIU_MIN (older CRIU fails or hangs on this kernel); install criu from Debian forky"
  v=$(containerd_version)
  [ -n "$v" ] || die "containerd is not installed ('containerd --version' failed)"
  version_ge "$v" "$CONTAINERD_MIN" || die "containerd $v is too old: the test peer must be containerd >= $CONTAINERD_MIN (Debian forky)"
  v=$(podman_version)
  [ -n "$v" ] || die "podman is not installed or does not run ('podman --version' failed)"
  version_ge "$v" "$PODMAN_MIN" || die "podman $v is too old: the cross-engine tests need Podman >= $PODMAN_MIN (Debian forky)"
  command -v runc >/dev/null || die "runc is not on PATH"
  v=$(crun_version)
  [ -n "$v" ] || die "crun is not installed or does not run ('crun --version' failed)"
  version_ge "$v" "$CRUN_MIN" || die "crun $v is too old: Crest needs crun >= $CRUN_MIN (features, recursive read-only mounts; Debian forky)"
  v=$(erofs_version)
  [ -n "$v" ] || die "mkfs.erofs is not installed ('mkfs.erofs --version' failed; package erofs-utils from Debian forky)"
  version_ge "$v" "$EROFS_MIN" || die "mkfs.erofs $v is too old: restores index archives with --tar=i, which needs erofs-utils >= $EROFS_MIN (Debian forky)"
  command -v conmon >/dev/null || die "conmon is not on PATH"
  command -v iptables-restore >/dev/null || die "iptables-restore is missing: CRIU needs it to lock the network during a dump"
  [ -x /usr/lib/cni/bridge ] || die "CNI plugins are missing under /usr/lib/cni"
  [ -f "$CRI_API_PROTO" ] || die "the CRI api.proto is missing at $CRI_API_PROTO (package golang-github-kubernetes-cri-api-dev)"
  [ -f "$CRIU_RPC_PROTO" ] || die "the CRIU rpc.proto is missing at $CRIU_RPC_PROTO (package libcriu-dev)"
  command -v clang >/dev/null && command -v ld.lld >/dev/null || die "clang or ld.lld is missing: the Native AOT publish links with them (packages clang, lld)"
  command -v dotnet >/dev/null || die "the .NET SDK is not on PATH: Crest builds with .NET 10"
  dotnet --version >/dev/null || die "'dotnet --version' fails after the install; the .NET SDK no longer runs on this machine"
}

main() {
  [ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages)"
  install_cni_default_network
  bind_v2_controllers_to_v1
  raise_pipe_max_size
  if everything_present; then
    check_versions
    log "all dependencies present (criu $(criu_version), containerd $(containerd_version), runc $(runc --version | awk 'NR==1{print $3}'), podman $(podman_version))"
    return 0
  fi
  add_forky_source
  log "apt-get update"
  apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  local missing
  missing=$(missing_packages "${BASE_PACKAGES[@]}")
  if [ -n "$missing" ]; then
    log "installing from Debian 12: $missing"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  log "installing from forky: ${FORKY_PACKAGES[*]}"
  apt-get install -y -qq --no-install-recommends -t forky "${FORKY_PACKAGES[@]}" >/dev/null
  # Named with /forky so their Go dependencies resolve against Debian 12 (17 packages, not 200).
  local p forky_named=()
  for p in "${FORKY_PROTO_PACKAGES[@]}"; do forky_named+=("$p/forky"); done
  log "installing proto sources from forky: ${FORKY_PROTO_PACKAGES[*]}"
  apt-get install -y -qq --no-install-recommends "${forky_named[@]}" >/dev/null
  # containerd's package enables a system service; Crest's tests run their own containerd in temp roots.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
  check_versions
  log "done (criu $(criu_version), containerd $(containerd_version), podman $(podman_version))"
}

main "$@"
