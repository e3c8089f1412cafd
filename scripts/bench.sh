#!/usr/bin/env bash
# make bench: crestd and containerd 2.1 side by side, same CRI client code; results under bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
dotnet build Crest.slnx -c Release -v q -clp:ErrorsOnly
dotnet bench/Crest.Bench/bin/Release/net10.0/Crest.Bench.dll --out bench/results "$@"
