#!/usr/bin/env bash
# The README's main job (make demo): crestd in its own temporary roots, driven by the crest CLI.
# It grows with each capability; today: the daemon comes up and answers CRI, an image goes through a loopback
# registry and back, and the daemon stops cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "demo: building (Release)"
dotnet build Crest.slnx -c Release -v q -clp:ErrorsOnly

crestd=src/Crest.Daemon/bin/Release/net10.0/crestd
crest=src/Crest.Cli/bin/Release/net10.0/crest
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
: > "$work/config.toml"
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
port=
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 20000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
[ -n "$port" ] || { echo "demo: no free loopback port for the registry"; exit 1; }
mkdir -p "$work/registry" "$work/rootfs/bin"
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
cp /bin/busybox "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
image="127.0.0.1:$port/demo/busybox:v1"
"$crest" -r "$endpoint" image import "$work/rootfs.tar" "$image"
"$crest" -r "$endpoint" image push "$image"
"$crest" -r "$endpoint" rmi "$image"
"$crest" -r "$endpoint" pull "$image"
"$crest" -r "$endpoint" images --digests
"$crest" -r "$endpoint" imagefsinfo -o table
kill "$registry_pid" 2>/dev/null || true

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

step "stop crestd with SIGTERM"
kill -TERM "$pid"
wait "$pid"
pid=
tail -n 2 "$work/crestd.log"
if [ -e "$work/state/crest.sock" ]; then echo "demo: crestd left its socket behind"; exit 1; fi
echo "socket removed"

step "demo finished"
