#!/usr/bin/env bash
# make bench: crestd and containerd 2.1 side by side, same CRI client code; results under bench/results/.
# The critest rows run cri-tools' own benchmark suite (critest --benchmark, unmodified) against both; critest is
# taken from CRITEST_DIR (default ../shared/critest beside the repository) and its stand-in images are served by a
# loopback registry that both runtimes reach through registry mirrors (scripts/lib/critest-env.sh). Without
# critest those rows are skipped and the table says so. Arguments go to Crest.Bench (--runs N, --checkpoint-only, --pod-checkpoint-only,
# --migration-only, --pod-migration-only, --critest-only, --calls-only, --critest-samples N).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. "$repo/scripts/lib/critest-env.sh"
./scripts/install-deps.sh
./scripts/build.sh

critest_dir=$(critest_locate "$repo")
critest_args=()
work=
cleanup() {
  critest_stop_registry
  if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
if [[ " $* " == *" --checkpoint-only "* || " $* " == *" --pod-checkpoint-only "* || " $* " == *" --calls-only "* || " $* " == *" --migration-only "* || " $* " == *" --pod-migration-only "* ]]; then
  :
elif [ -x "$critest_dir/bin/critest" ]; then
  work=$(mktemp -d /tmp/crest-bench-critest-XXXXXX)
  critest_start_registry "$work" || exit 1
  critest_load_images "$critest_dir" >&2 || { echo "bench: loading critest's stand-in images failed" >&2; exit 1; }
  mkdir -p "$work/mirrors"
  critest_crest_mirrors > "$work/mirrors/crest.toml"
  critest_containerd_hosts "$work/mirrors/containerd-hosts"
  critest_args=(--critest "$critest_dir" --critest-mirrors "$work/mirrors")
else
  echo "bench: no critest at $critest_dir (set CRITEST_DIR): the critest rows are skipped" >&2
fi

dotnet bench/Crest.Bench/bin/Release/net10.0/Crest.Bench.dll --out bench/results "${critest_args[@]}" "$@"
