#!/usr/bin/env bash
# make deb: crest_VERSION_amd64.deb with dpkg-deb. crestd and crest are the Native AOT binaries of make build
# (artifacts/bin; no .NET runtime needed on the node) in /usr/lib/crest, linked from /usr/bin; the unit goes
# to /usr/lib/systemd/system (Debian's merged /usr: /lib/systemd/system is the same directory); /etc/crest/config.toml
# is a conffile holding every key commented out with its default (taken from docs/config.md, so the two never differ).
# Usage: scripts/deb.sh [OUTDIR]   (default artifacts/deb); prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-artifacts/deb}
version=$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' Directory.Build.props | head -n 1)
stage=$(mktemp -d /tmp/crest-deb-XXXXXX)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT

bin=artifacts/bin
for f in crestd crest libe_sqlite3.so; do
  [ -f "$bin/$f" ] || { echo "deb: $bin/$f is missing: run make build first (make deb does)" >&2; exit 1; }
done
echo "deb: packaging crestd and crest $version (Native AOT, linux-x64) from $bin" >&2
mkdir -p "$stage/usr/lib/crest"
# crestd's SQLite library is loaded from beside it; the .dbg symbol files stay out of the package.
install -m 0755 "$bin/crestd" "$bin/crest" "$stage/usr/lib/crest/"
install -m 0644 "$bin/libe_sqlite3.so" "$stage/usr/lib/crest/"

mkdir -p "$stage/usr/bin" "$stage/usr/lib/systemd/system" "$stage/etc/crest" "$stage/usr/share/doc/crest" "$stage/DEBIAN"
ln -s ../lib/crest/crestd "$stage/usr/bin/crestd"
ln -s ../lib/crest/crest "$stage/usr/bin/crest"
install -m 0644 packaging/crestd.service "$stage/usr/lib/systemd/system/crestd.service"
install -m 0644 README.md docs/config.md docs/user-guide.md "$stage/usr/share/doc/crest/"
{
  echo "# crestd configuration: every key with its default, commented out. Uncomment what you change."
  echo "# The keys are explained in /usr/share/doc/crest/config.md."
  echo "#"
  awk '/^```toml$/ { inside = 1; next } /^```$/ { inside = 0 } inside' docs/config.md | sed -e 's/^/# /' -e 's/ *$//'
} > "$stage/etc/crest/config.toml"
echo /etc/crest/config.toml > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" packaging/debian/control > "$stage/DEBIAN/control"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"

mkdir -p "$out"
deb="$out/crest_${version}_amd64.deb"
# gzip at a low level: xz would add a minute for little.
dpkg-deb --root-owner-group -Zgzip -z3 --build "$stage" "$deb" >&2
echo "$deb"
