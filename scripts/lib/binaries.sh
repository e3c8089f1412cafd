# Sourced by the scripts that run crest and crestd: crest_binaries REPO sets $crestd and $crest to the Native AOT
# binaries that scripts/build.sh (make build) publishes into artifacts/bin, or, with CREST_JIT=1, to the JIT builds
# in src/*/bin/Release/net10.0 (for a debugger). Fails with a message when they are not built.
crest_binaries() {
  local repo=$1
  if [ "${CREST_JIT:-}" = 1 ]; then
    crestd=$repo/src/Crest.Daemon/bin/Release/net10.0/crestd
    crest=$repo/src/Crest.Cli/bin/Release/net10.0/crest
  else
    crestd=$repo/artifacts/bin/crestd
    crest=$repo/artifacts/bin/crest
  fi
  if [ ! -x "$crestd" ] || [ ! -x "$crest" ]; then
    echo "$crestd or $crest is missing: run make build (scripts/build.sh)" >&2
    return 1
  fi
}
