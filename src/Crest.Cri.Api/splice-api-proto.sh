#!/bin/sh
# Builds the CRI api.proto Crest compiles: Debian's copy without gogoproto options, plus the KEP-5823 RPCs and
# messages from Protos/kep5823 while the package lacks them (once it has CheckpointPod, its own definitions win).
# usage: splice-api-proto.sh SOURCE_API_PROTO FRAGMENT_DIR OUTPUT
set -eu
source=$1 fragments=$2 output=$3
if grep -q 'rpc CheckpointPod(' "$source"; then
  sed '/gogoproto/d' "$source" > "$output"
  exit 0
fi
grep -q '^service RuntimeService {$' "$source" || { echo "splice-api-proto: no 'service RuntimeService {' line in $source" >&2; exit 1; }
sed '/gogoproto/d' "$source" | awk -v rpcs="$fragments/rpcs.proto.fragment" '
  { print }
  /^service RuntimeService \{$/ { while ((getline line < rpcs) > 0) print line }' > "$output"
cat "$fragments/messages.proto.fragment" >> "$output"
