# shellcheck shell=bash
# Sourced by scripts/critest.sh and scripts/bench.sh: where cri-tools' critest lives, and a loopback registry
# (Debian's docker-registry) holding the stand-in images critest pulls, so no run needs the network.
#
#   critest_dir=$(critest_locate "$repo")     CRITEST_DIR, or ../shared/critest beside the repository
#   critest_start_registry "$work"            starts the registry on a free loopback port, storage under
#                                             $work/registry; sets registry_port and registry_pid
#   critest_load_images "$critest_dir"        pushes every stand-in image into it (load-images.sh, skopeo)
#   critest_crest_mirrors > config.toml       crestd's mirrors for every registry critest names
#   critest_containerd_hosts DIR              the same mirrors as containerd hosts.toml files under DIR
#                                             (its [plugins."io.containerd.cri.v1.images".registry] config_path)
#   critest_stop_registry
#
# Docker Hub's images sit under docker/ in the loopback registry: crestd treats a mirror URL's path as a
# repository prefix (as containers-registries.conf does); containerd gets the same with override_path.

# The registries critest's specs and benchmarks name, all served by the loopback registry at its root.
critest_registries=(registry.k8s.io gcr.io k8s.gcr.io public.ecr.aws)
registry_port=
registry_pid=

critest_locate() {
  if [ -n "${CRITEST_DIR:-}" ]; then echo "$CRITEST_DIR"; else echo "$(cd "$1/.." && pwd)/shared/critest"; fi
}

critest_free_port() {
  local candidate
  for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then echo "$candidate"; return 0; fi
  done
  return 1
}

critest_wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# critest_start_registry WORK: returns 1 with a message on stdout if there is no port or the registry does not start.
critest_start_registry() {
  local work=$1
  registry_port=$(critest_free_port) || { echo "critest: no free loopback port for the registry"; return 1; }
  mkdir -p "$work/registry"
  cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$registry_port}
YML
  docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
  registry_pid=$!
  critest_wait_port "$registry_port" || { cat "$work/registry.log"; echo "critest: the registry did not start"; return 1; }
}

critest_load_images() {
  "$1/load-images.sh" "127.0.0.1:$registry_port"
}

critest_stop_registry() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null || true; fi
  registry_pid=
}

critest_crest_mirrors() {
  local host
  for host in "${critest_registries[@]}"; do
    printf '[registries."%s"]\nmirrors = ["http://127.0.0.1:%s"]\n' "$host" "$registry_port"
  done
  printf '[registries."docker.io"]\nmirrors = ["http://127.0.0.1:%s/docker"]\n' "$registry_port"
}

# containerd's hosts.toml: a host URL with a path and override_path = true is used as the API root as it stands
# (no /v2 appended), so docker.io/library/busybox is fetched from /v2/docker/library/busybox.
critest_containerd_hosts() {
  local dir=$1 host
  for host in "${critest_registries[@]}"; do
    mkdir -p "$dir/$host"
    printf 'server = "https://%s"\n\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "$host" "$registry_port" > "$dir/$host/hosts.toml"
  done
  mkdir -p "$dir/docker.io"
  printf 'server = "https://registry-1.docker.io"\n\n[host."http://127.0.0.1:%s/v2/docker"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n' \
    "$registry_port" > "$dir/docker.io/hosts.toml"
}
