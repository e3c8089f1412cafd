#!/usr/bin/env bash
# make build: the whole solution in Release (libraries, tests, benchmarks, and crest and crestd as JIT builds in
# src/*/bin/Release/net10.0/), then crest and crestd published as Native AOT binaries into artifacts/bin/, the ones
# the demo, the tests, the benchmarks and the package run.
#
# The AOT publish must print no warning: trimming and AOT warnings are errors in this repo (TreatWarningsAsErrors
# reaches ILC as --warnaserror), and any other warning line in its output fails the build here too.
# ILC runs only when its inputs changed; the two binaries are compiled in parallel.
# CREST_JIT=1 skips the AOT publish: scripts/lib/binaries.sh and the E2E tests then run the JIT builds (for debugging).
set -uo pipefail
cd "$(dirname "$0")/.."

echo "build: dotnet build Crest.slnx (Release)"
dotnet build Crest.slnx -c Release -v q -clp:ErrorsOnly || { echo "build: the build failed"; exit 1; }

if [ "${CREST_JIT:-}" = 1 ]; then
  echo "build: CREST_JIT=1: no Native AOT publish; the JIT builds in src/Crest.Daemon/bin and src/Crest.Cli/bin are used"
  exit 0
fi

echo "build: Native AOT publish of crest and crestd into artifacts/bin"
logs=$(mktemp -d /tmp/crest-aot-XXXXXX)
trap 'rm -rf "$logs"' EXIT
start=$(date +%s)
pids=()
for project in Crest.Cli Crest.Daemon; do
  dotnet publish "src/$project" -c Release --no-build -v q -nologo -clp:NoSummary > "$logs/$project.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed=1
done
for log in "$logs"/*.log; do
  # -v q prints only warnings and errors, so any line naming one is a finding.
  if grep -Eiq '(^|[: ])(warning|error)( |:)' "$log"; then
    echo "build: the AOT publish of $(basename "$log" .log) reported:"
    sed 's/^/  /' "$log"
    failed=1
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "build: the Native AOT publish failed or warned (fix the cause; CREST_JIT=1 builds without it for debugging)"
  exit 1
fi
echo "build: artifacts/bin/crest and artifacts/bin/crestd ready ($(( $(date +%s) - start )) s)"
