#!/usr/bin/env bash
# The README's main job (make demo): crestd in its own temporary roots, driven by the crest CLI.
# It grows with each capability; today it shows the daemon coming up, answering CRI, and stopping cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "demo: building (Release)"
dotnet build Crest.slnx -c Release -v q -clp:ErrorsOnly

crestd=src/Crest.Daemon/bin/Release/net10.0/crestd
crest=src/Crest.Cli/bin/Release/net10.0/crest
work=$(mktemp -d /tmp/crest-demo-XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start crestd with its roots under $work"
"$crestd" --root "$work/root" --state "$work/state" > "$work/crestd.log" 2>&1 &
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
"$crest" -r "$endpoint" info -o table

step "crest info -o json | the CRIU crestd found"
"$crest" -r "$endpoint" info -o json | sed -n '/"criu"/,/}/p'

step "stop crestd with SIGTERM"
kill -TERM "$pid"
wait "$pid"
pid=
tail -n 2 "$work/crestd.log"
[ ! -e "$work/state/crest.sock" ] && echo "socket removed"

step "demo finished"
