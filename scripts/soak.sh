#!/usr/bin/env bash
# make soak (issue 18; not in CI): one crestd on temporary roots under churn, then a count of what it leaked.
# Default: 500 pod cycles from 8 concurrent clients, 50 checkpoint+restore cycles, streaming exec, attach and ExecSync
# alongside. Arguments go to Crest.Bench --soak: --cycles N, --clients N, --checkpoints N, --crestd PATH.
# Prints mounts, netns files, cgroups, veths, leases, processes and object dirs left behind, crestd's open fds and
# SQLite WAL size, and crestd's RSS at start, peak and end; exits 1 on any leak or failed call. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "soak: needs root (it runs pods with runc, CNI and CRIU)" >&2
  exit 2
fi
if [ "${SOAK_NO_BUILD:-}" != 1 ]; then
  ./scripts/install-deps.sh
  ./scripts/build.sh
fi
exec dotnet bench/Crest.Bench/bin/Release/net10.0/Crest.Bench.dll --soak "$@"
