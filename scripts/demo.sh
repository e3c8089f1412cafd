#!/usr/bin/env bash
# The README's main job (make demo): crestd in its own temporary roots, driven by the crest CLI.
# It grows with each capability; today: the daemon comes up and answers CRI, an image goes through a loopback
# registry and back, a pod serves HTTP, a counter is checkpointed, restored into a new pod and restored again
# from a checkpoint image, and the daemon stops cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "demo: building (Release; crest and crestd as Native AOT binaries, CREST_JIT=1 for the JIT builds)"
./scripts/build.sh
. scripts/lib/binaries.sh
. scripts/lib/demo-env.sh
crest_binaries "$(pwd)"
work=$(mktemp -d /tmp/crest-demo-XXXXXX)
pid=
registry_pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    for p in $("$crest" -r "unix://$work/state/crest.sock" pods -q 2>/dev/null); do "$crest" -r "unix://$work/state/crest.sock" rmp "$p" >/dev/null 2>&1 || true; done
  fi
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start crestd with its roots under $work"
# Its own (empty) config file, so a host /etc/crest/config.toml does not change the demo.
# Restore through CreateContainer is off by default (as in containerd >= 2.2.7); the demo turns it on.
printf '[restore]\nvia_create = true\n' > "$work/config.toml"
"$crestd" --config "$work/config.toml" --root "$work/root" --state "$work/state" > "$work/crestd.log" 2>&1 &
pid=$!
endpoint="unix://$work/state/crest.sock"
for _ in $(seq 1 300); do
  "$crest" -r "$endpoint" version >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/crestd.log"; echo "demo: crestd exited"; exit 1; }
  sleep 0.1
done
cat "$work/crestd.log"

step "crest version"
"$crest" -r "$endpoint" version

step "crest info (conditions, handlers, versions)"
# A node that is not ready makes info exit 1; the demo shows the table either way.
"$crest" -r "$endpoint" info -o table || echo "(the node is not ready: see the conditions above)"

step "crest info -o json | the CRIU crestd found"
"$crest" -r "$endpoint" info -o json | sed -n '/"criu"/,/}/p' || true

step "images: a loopback registry, a busybox rootfs imported, pushed, removed and pulled back"
demo_start_registry "$work" demo || exit 1
demo_busybox_rootfs "$work"
image="127.0.0.1:$port/demo/busybox:v1"
"$crest" -r "$endpoint" image import "$work/rootfs.tar" "$image"
"$crest" -r "$endpoint" image push "$image"
"$crest" -r "$endpoint" rmi "$image"
"$crest" -r "$endpoint" pull "$image"
"$crest" -r "$endpoint" images --digests
"$crest" -r "$endpoint" imagefsinfo -o table

step "a pod with a web server from that image: conmon + runc, CNI bridge, reachable from the host"
cat > "$work/pod.json" <<JSON
{"metadata": {"name": "demo", "uid": "demo-uid", "namespace": "default", "attempt": 1},
 "hostname": "demo", "log_directory": "$work/logs", "linux": {} }
JSON
cat > "$work/web.json" <<JSON
{"metadata": {"name": "web"}, "image": {"image": "$image"},
 "command": ["/bin/busybox", "sh", "-c", "mkdir -p /www; echo hello from a crest pod > /www/index.html; echo serving; exec /bin/busybox httpd -f -p 8080 -h /www"],
 "log_path": "web.log", "linux": {} }
JSON
pod=$("$crest" -r "$endpoint" runp "$work/pod.json")
ctr=$("$crest" -r "$endpoint" create "$pod" "$work/web.json" "$work/pod.json")
"$crest" -r "$endpoint" start "$ctr" >/dev/null
"$crest" -r "$endpoint" pods
"$crest" -r "$endpoint" ps
ip=$("$crest" -r "$endpoint" inspectp "$pod" | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -n 1)
echo "pod IP: $ip"
answer=
for _ in $(seq 1 50); do
  answer=$( (exec 3<>"/dev/tcp/$ip/8080" && printf 'GET /index.html HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null | tail -n 1) && [ -n "$answer" ] && break
  sleep 0.1
done
echo "GET http://$ip:8080/ -> $answer"
[ "$answer" = "hello from a crest pod" ] || { echo "demo: the pod did not answer"; exit 1; }
echo "container log ($work/logs/web.log):"
cat "$work/logs/web.log"
"$crest" -r "$endpoint" stop -T 2 "$ctr" >/dev/null
"$crest" -r "$endpoint" rm "$ctr" >/dev/null
"$crest" -r "$endpoint" stopp "$pod"
"$crest" -r "$endpoint" rmp "$pod"

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

step "checkpoint: a running counter is dumped with CRIU and keeps running"
cat > "$work/counter.json" <<JSON
{"metadata": {"name": "counter"}, "image": {"image": "$image"},
 "command": ["/bin/busybox", "sh", "-c", "i=0; while true; do i=\$((i+1)); echo count \$i; sleep 0.2; done"],
 "log_path": "counter.log", "linux": {} }
JSON
pod=$("$crest" -r "$endpoint" runp "$work/pod.json")
ctr=$("$crest" -r "$endpoint" create "$pod" "$work/counter.json" "$work/pod.json")
"$crest" -r "$endpoint" start "$ctr" >/dev/null
sleep 2
echo "a change to the rootfs: /root/note"
"$crest" -r "$endpoint" exec -s "$ctr" /bin/sh -c 'mkdir -p /root && echo written before the checkpoint > /root/note'
t=$(date +%s%N)
"$crest" -r "$endpoint" checkpoint --stats --export "$work/counter.tar" "$ctr"
checkpoint_ms=$(ms "$t")
at_checkpoint=$(tail -n 1 "$work/logs/counter.log" | sed 's/.* count //')
echo "last count at the checkpoint: $at_checkpoint"
sleep 1
echo "the container kept running:  $(tail -n 1 "$work/logs/counter.log" | sed 's/.* count /count /')"
ls -l "$work/counter.tar"
echo "archive contents (top level):"
tar -tf "$work/counter.tar" | grep -v '^checkpoint/.' | sed 's/^/  /'
checkpointctl show "$work/counter.tar"

step "a checkpoint OCI image, built without buildah, pushed to the loopback registry"
ckpt_image="127.0.0.1:$port/demo/counter-checkpoint:v1"
"$crest" -r "$endpoint" checkpoint-image --push "$work/counter.tar" "$ckpt_image"

step "everything removed: container, pod, base image, checkpoint image"
"$crest" -r "$endpoint" rm "$ctr" >/dev/null
"$crest" -r "$endpoint" rmp "$pod"
"$crest" -r "$endpoint" rmi "$image" "$ckpt_image"
"$crest" -r "$endpoint" images

step "restore in a new pod from the registry image; the base image comes back by digest"
"$crest" -r "$endpoint" pull "$ckpt_image"
sed 's/"name": "demo"/"name": "demo-restored"/; s/demo-uid/demo-uid-2/; s#/logs"#/logs-restored"#' "$work/pod.json" > "$work/pod2.json"
sed "s#\"image\": \"$image\"#\"image\": \"$ckpt_image\"#" "$work/counter.json" > "$work/restore.json"
pod=$("$crest" -r "$endpoint" runp "$work/pod2.json")
t=$(date +%s%N)
ctr=$("$crest" -r "$endpoint" create "$pod" "$work/restore.json" "$work/pod2.json")
create_ms=$(ms "$t")
t=$(date +%s%N)
"$crest" -r "$endpoint" start "$ctr" >/dev/null
start_ms=$(ms "$t")
"$crest" -r "$endpoint" images --digests
sleep 1
echo "restored log, around the checkpoint (the old lines come first):"
grep "count" "$work/logs-restored/counter.log" | sed 's/.* count /  count /' | grep -A 4 -B 2 "count $at_checkpoint\$" | head -n 8
last=$(tail -n 1 "$work/logs-restored/counter.log" | sed 's/.* count //')
[ "$last" -gt "$at_checkpoint" ] || { echo "demo: the counter did not continue"; exit 1; }
note=$("$crest" -r "$endpoint" exec -s "$ctr" /bin/busybox cat /root/note)
echo "the rootfs change is there: /root/note = $note"
[ "$note" = "written before the checkpoint" ] || { echo "demo: the rootfs change is missing"; exit 1; }
"$crest" -r "$endpoint" inspect "$ctr" | grep -E '"(restored|checkpointedAt|checkpointImage)": "' | sed 's/^ */  /'
"$crest" -r "$endpoint" ps
"$crest" -r "$endpoint" rmp "$pod"
kill "$registry_pid" 2>/dev/null || true

step "timings"
echo "  checkpoint (CRI CheckpointContainer, archive written):        ${checkpoint_ms} ms"
echo "  restore create (checkpoint image read, base image pulled):    ${create_ms} ms"
echo "  restore start (rootfs diff applied, CRIU restore):            ${start_ms} ms"

step "stop crestd with SIGTERM"
kill -TERM "$pid"
wait "$pid"
pid=
tail -n 2 "$work/crestd.log"
if [ -e "$work/state/crest.sock" ]; then echo "demo: crestd left its socket behind"; exit 1; fi
echo "socket removed"

step "demo finished"
