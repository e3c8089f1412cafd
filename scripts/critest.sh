#!/usr/bin/env bash
# make critest: the official CRI validation suite (cri-tools' critest, run unmodified) against crestd.
# A loopback registry (Debian's docker-registry) holds the stand-in test images from the shared critest
# folder; crestd runs in temporary roots with mirrors for every registry critest names, so critest pulls
# the names it knows (no --registry-prefix, no test-images file). One run per handler named in
# CRITEST_HANDLERS (default "runc crun"; runc is the default handler, crun is chosen with
# --runtime-handler). Ends with "N passed, N failed, N skipped" summed over the runs; exit 0 only with 0 failed.
#
# Environment: CRITEST_DIR (default ../shared/critest beside the repository), CRITEST_HANDLERS,
# CRITEST_FOCUS (a ginkgo focus regexp, for a developer's quick loop), CRITEST_OUT (results; default a temp dir
# that is kept), CRITEST_SKIP_BUILD=1 (use the build that is there).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. "$repo/scripts/lib/critest-env.sh"

critest_dir=$(critest_locate "$repo")
handlers=${CRITEST_HANDLERS:-runc crun}
if [ ! -x "$critest_dir/bin/critest" ]; then
  echo "critest: $critest_dir/bin/critest is missing: set CRITEST_DIR to the folder holding cri-tools' critest, crictl and the stand-in images"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

if [ "${CRITEST_SKIP_BUILD:-}" != 1 ]; then
  ./scripts/install-deps.sh || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
  echo "critest: building (Release)"
  ./scripts/build.sh || { echo "critest: the build failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
fi

. "$repo/scripts/lib/binaries.sh"
crest_binaries "$repo" || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
work=$(mktemp -d /tmp/crest-critest-XXXXXX)
# A user-namespaced pod's root (an unmapped "other" on the host) must reach the container root filesystems under it,
# or crestd announces no user namespace support; mktemp's 0700 would hide them.
chmod 0711 "$work"
out=${CRITEST_OUT:-$work/results}
mkdir -p "$out"
crestd_pid=
cleanup() {
  if [ -n "$crestd_pid" ] && kill -0 "$crestd_pid" 2>/dev/null; then
    # critest removes what it makes; a spec that failed half-way may not have, so pods go before the daemon.
    for p in $("$critest_dir/bin/crictl" --config /dev/null -r "unix://$work/state/crest.sock" pods -q 2>/dev/null); do
      "$critest_dir/bin/crictl" --config /dev/null -r "unix://$work/state/crest.sock" rmp -f "$p" >/dev/null 2>&1 || true
    done
    kill -TERM "$crestd_pid" 2>/dev/null; wait "$crestd_pid" 2>/dev/null || true
  fi
  critest_stop_registry
  # The results stay for reading; the roots (images, snapshots, state) go. With CRITEST_OUT the results and crestd's
  # log are elsewhere, so the whole work directory goes.
  for m in $(awk -v w="$work" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null || true; done
  if [ -n "${CRITEST_OUT:-}" ]; then
    cp "$work/crestd.log" "$out/crestd.log" 2>/dev/null || true
    rm -rf "$work"
  else
    rm -rf "$work/root" "$work/state" "$work/registry"
  fi
}
trap cleanup EXIT

critest_start_registry "$work" || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
critest_load_images "$critest_dir" || { echo "critest: loading the stand-in images failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }

# Every registry critest names resolves to the loopback registry. Docker Hub's images sit under docker/ there
# (a mirror's path is a repository prefix, as in containers-registries.conf).
critest_crest_mirrors > "$work/config.toml"

"$crestd" --config "$work/config.toml" --root "$work/root" --state "$work/state" > "$work/crestd.log" 2>&1 &
crestd_pid=$!
endpoint="unix://$work/state/crest.sock"
for _ in $(seq 1 300); do
  [ -S "$work/state/crest.sock" ] && "$critest_dir/bin/crictl" --config /dev/null -r "$endpoint" version >/dev/null 2>&1 && break
  kill -0 "$crestd_pid" 2>/dev/null || { cat "$work/crestd.log"; echo "critest: crestd exited"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
  sleep 0.1
done

passed=0 failed=0 skipped=0
for handler in $handlers; do
  args=()
  [ "$handler" = runc ] || args=(--runtime-handler "$handler")
  [ -z "${CRITEST_FOCUS:-}" ] || args+=(--ginkgo.focus "$CRITEST_FOCUS")
  echo "critest: running the CRI validation suite against crestd, handler $handler (results in $out/$handler)"
  "$critest_dir/run-critest.sh" "$endpoint" "$out/$handler" "${args[@]}" | grep -E '^(FAIL|critest:)' | sed "s/^/  [$handler] /"
  line=$(tail -n 1 "$out/$handler/summary.txt" 2>/dev/null)
  if [[ "$line" =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped ]]; then
    passed=$((passed + BASH_REMATCH[1])); failed=$((failed + BASH_REMATCH[2])); skipped=$((skipped + BASH_REMATCH[3]))
  else
    echo "critest: the $handler run wrote no summary; counted as one failure"
    failed=$((failed + 1))
  fi
done

cp "$work/crestd.log" "$out/crestd.log" 2>/dev/null || true
echo "critest: crestd's log and critest's reports are in $out"
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$failed" -eq 0 ]
