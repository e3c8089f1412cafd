# Sourced by the demos (demo.sh, demo-migrate.sh): a loopback registry in a work directory, and a busybox root
# filesystem tarball to import. The caller's cleanup kills $registry_pid.

# demo_start_registry WORK NAME: serves a docker-registry on a free 127.0.0.1 port, storing under WORK/registry;
# sets $port and $registry_pid. NAME prefixes the error message.
demo_start_registry() {
  local work=$1 name=$2 candidate
  port=
  for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
  done
  [ -n "$port" ] || { echo "$name: no free loopback port for the registry"; return 1; }
  mkdir -p "$work/registry"
  cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YML
  docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name: the registry on 127.0.0.1:$port did not answer (see $work/registry.log)"
  return 1
}

# demo_busybox_rootfs WORK: WORK/rootfs.tar, the host's static busybox as /bin/busybox and /bin/sh.
demo_busybox_rootfs() {
  local work=$1
  mkdir -p "$work/rootfs/bin"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  ln -sf busybox "$work/rootfs/bin/sh"
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
}
