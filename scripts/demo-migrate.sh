#!/usr/bin/env bash
# make demo-migrate: two crestd "nodes" on this machine (own roots, sockets, streaming ports and CNI bridges), one
# loopback registry both pull from, a counter running on node A, `crest migrate` moving it to node B (stop-copy)
# and back to A (post-copy, where the kernel allows it), then once more through the registry (--via).
# Prints the migration's progress and result (downtime, bytes moved) and the counter's log across the switch.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "demo-migrate: building (Release; crest and crestd as Native AOT binaries, CREST_JIT=1 for the JIT builds)"
./scripts/build.sh
. scripts/lib/binaries.sh
. scripts/lib/demo-env.sh
crest_binaries "$(pwd)"
work=$(mktemp -d /tmp/crest-demo-migrate-XXXXXX)
pids=()
registry_pid=
cleanup() {
  for node in a b; do
    ep="unix://$work/$node/state/crest.sock"
    for p in $("$crest" -r "$ep" pods -q 2>/dev/null); do "$crest" -r "$ep" rmp "$p" >/dev/null 2>&1 || true; done
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
  ip link delete crdemoa 2>/dev/null || true
  ip link delete crdemob 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

start_node() { # name bridge subnet
  local dir="$work/$1"
  mkdir -p "$dir/cni" "$dir/logs"
  cat > "$dir/cni/10-demo-$1.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "demo-migrate-$1", "plugins": [
  {"type": "bridge", "bridge": "$2", "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "$3"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}, {"type": "loopback"}]}
JSON
  # A migration's target restores through CreateContainer, which is off by default.
  printf '[cni]\nconf_dir = "%s"\nplugin_dirs = ["/usr/lib/cni"]\n[restore]\nvia_create = true\n' "$dir/cni" > "$dir/config.toml"
  "$crestd" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" > "$dir/crestd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do
    "$crest" -r "unix://$dir/state/crest.sock" version >/dev/null 2>&1 && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$dir/crestd.log"; echo "demo-migrate: crestd $1 exited"; exit 1; }
    sleep 0.1
  done
  echo "demo-migrate: crestd $1 did not answer"; exit 1
}

step "two nodes: crestd A (bridge crdemoa, 10.127.0.0/16) and crestd B (bridge crdemob, 10.128.0.0/16) under $work"
start_node a crdemoa 10.127.0.0/16
start_node b crdemob 10.128.0.0/16
a="unix://$work/a/state/crest.sock"
b="unix://$work/b/state/crest.sock"
echo "node A: $a"
echo "node B: $b"
"$crest" -r "$a" info -o json | sed -n '/"liveMigration"/,/]/p'

step "a loopback registry both nodes share; busybox pushed there and pulled on A (so A knows its digest)"
demo_start_registry "$work" demo-migrate || exit 1
demo_busybox_rootfs "$work"
image="127.0.0.1:$port/demo/busybox:v1"
"$crest" -r "$a" image import "$work/rootfs.tar" "$image" >/dev/null
"$crest" -r "$a" image push "$image"
"$crest" -r "$a" rmi "$image" >/dev/null
"$crest" -r "$a" pull "$image"

step "a counter running on node A"
cat > "$work/pod-a.json" <<JSON
{"metadata": {"name": "counter", "uid": "demo-a", "namespace": "default", "attempt": 1},
 "hostname": "counter", "log_directory": "$work/a/logs", "linux": {} }
JSON
cat > "$work/pod-b.json" <<JSON
{"metadata": {"name": "counter", "uid": "demo-b", "namespace": "default", "attempt": 1},
 "hostname": "counter", "log_directory": "$work/b/logs", "linux": {} }
JSON
cat > "$work/counter.json" <<JSON
{"metadata": {"name": "counter"}, "image": {"image": "$image"},
 "command": ["/bin/busybox", "sh", "-c", "i=0; while true; do i=\$((i+1)); echo count \$i; sleep 0.1; done"],
 "log_path": "counter.log", "linux": {} }
JSON
pod=$("$crest" -r "$a" runp "$work/pod-a.json")
ctr=$("$crest" -r "$a" create "$pod" "$work/counter.json" "$work/pod-a.json")
"$crest" -r "$a" start "$ctr" >/dev/null
for _ in $(seq 1 100); do
  [ "$(grep -c count "$work/a/logs/counter.log" 2>/dev/null || echo 0)" -ge 10 ] && break
  sleep 0.1
done
"$crest" -r "$a" ps
echo "counter on A: $(tail -n 1 "$work/a/logs/counter.log")"

step "crest -r A migrate $ctr --to B --pod-config pod-b.json (stop-copy)"
"$crest" -r "$a" migrate "$ctr" --to "$b" --pod-config "$work/pod-b.json"

step "after the switch: nothing on A, the counter on B"
echo "node A containers: $("$crest" -r "$a" ps -a -q | wc -l)"
"$crest" -r "$b" ps
sleep 1
last_a=$(tail -n 1 "$work/a/logs/counter.log")
echo "last line written on A:   $last_a"
echo "the log on B around it (B's log starts with A's lines, carried by the checkpoint):"
grep -A3 -F "$last_a" "$work/b/logs/counter.log" | sed 's/^/  /'
echo "latest on B:              $(tail -n 1 "$work/b/logs/counter.log")"

step "crest -r B migrate it back --to A --strategy post-copy: A restores it at once and its memory follows from B's page server"
if "$crest" -r "$b" info -o json | jq -e '.liveMigration[] | select(.strategy == "post-copy") | .supported' >/dev/null; then
  cat > "$work/pod-a2.json" <<JSON
{"metadata": {"name": "counter-back", "uid": "demo-a2", "namespace": "default", "attempt": 1},
 "hostname": "counter", "log_directory": "$work/a/logs2", "linux": {} }
JSON
  mkdir -p "$work/a/logs2"
  on_b=$("$crest" -r "$b" ps -q | head -n 1)
  "$crest" -r "$b" migrate "$on_b" --to "$a" --pod-config "$work/pod-a2.json" --strategy post-copy
  echo "node B containers: $("$crest" -r "$b" ps -a -q | wc -l)"
  "$crest" -r "$a" ps
  for _ in $(seq 1 50); do [ -s "$work/a/logs2/counter.log" ] && break; sleep 0.1; done
  echo "latest on A again:        $(tail -n 1 "$work/a/logs2/counter.log")"
else
  echo "post-copy is not available on this node: $("$crest" -r "$b" info -o json | jq -r '.liveMigration[] | select(.strategy == "post-copy") | .reason')"
fi

step "crest migrate --via 127.0.0.1:$port/demo/checkpoints: the checkpoint travels as a checkpoint OCI image through the registry"
if [ -s "$work/a/logs2/counter.log" ]; then from=$a; to=$b; to_logs=$work/b/logs-via; else from=$b; to=$a; to_logs=$work/a/logs-via; fi
mkdir -p "$to_logs"
cat > "$work/pod-via.json" <<JSON
{"metadata": {"name": "counter-via", "uid": "demo-via", "namespace": "default", "attempt": 1},
 "hostname": "counter", "log_directory": "$to_logs", "linux": {} }
JSON
on_from=$("$crest" -r "$from" ps -q | head -n 1)
"$crest" -r "$from" migrate "$on_from" --to "$to" --pod-config "$work/pod-via.json" --via "127.0.0.1:$port/demo/checkpoints"
"$crest" -r "$to" ps
for _ in $(seq 1 50); do [ -s "$to_logs/counter.log" ] && break; sleep 0.1; done
echo "latest after the registry hop: $(tail -n 1 "$to_logs/counter.log")"
echo "checkpoint images kept on either node: $("$crest" -r "$a" images | grep -c demo/checkpoints) on A, $("$crest" -r "$b" images | grep -c demo/checkpoints) on B (the registry keeps its tag)"

step "--strategy pre-copy on this kernel"
"$crest" -r "$a" migrate "$ctr" --to "$b" --pod-config "$work/pod-b.json" --strategy pre-copy || true
