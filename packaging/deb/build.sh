#!/usr/bin/env bash
# Builds builddird_<version>_<arch>.deb from already built release binaries
# with dpkg-deb alone (no cargo-deb to compile first). Seconds, any user.
#
# Usage: packaging/deb/build.sh [BIN_DIR [OUT_DIR]]
#   BIN_DIR  where builddird and builddir-ctl are (default: target/release)
#   OUT_DIR  where the .deb goes (default: target/debian)
# Prints the path of the .deb on its last line.
#
# Contents: /usr/bin/{builddird,builddir-ctl}; the systemd units in
# /usr/lib/systemd/system (ExecStart=/usr/bin/builddird); the sysusers
# snippet in /usr/lib/sysusers.d; README and docs in /usr/share/doc/builddird
# with a commented config example (examples/config.toml). No conffile: the
# daemon runs on defaults until /etc/builddird/config.toml exists.
# Maintainer scripts (postinst, prerm, postrm) are beside this file.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
bin_dir=${1:-$repo/target/release}
out_dir=${2:-$repo/target/debian}

for b in builddird builddir-ctl; do
    [ -x "$bin_dir/$b" ] || {
        echo "error: $bin_dir/$b missing: run 'cargo build --release --bins' first" >&2
        exit 1
    }
done
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb not found (apt-get install dpkg)" >&2; exit 1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "error: no version in $repo/Cargo.toml [workspace.package]" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/builddird
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/systemd/system" \
    "$pkg/usr/lib/sysusers.d" "$pkg/usr/share/doc/builddird/examples"
install -m 0755 -s "$bin_dir/builddird" "$bin_dir/builddir-ctl" "$pkg/usr/bin/" 2>/dev/null \
    || install -m 0755 "$bin_dir/builddird" "$bin_dir/builddir-ctl" "$pkg/usr/bin/"
install -m 0644 "$repo/systemd/builddird.socket" "$pkg/usr/lib/systemd/system/"
# The repository's unit runs /usr/local/bin/builddird (a source install);
# the package's binary is in /usr/bin.
sed 's|^ExecStart=/usr/local/bin/builddird|ExecStart=/usr/bin/builddird|' \
    "$repo/systemd/builddird.service" > "$pkg/usr/lib/systemd/system/builddird.service"
grep -q '^ExecStart=/usr/bin/builddird$' "$pkg/usr/lib/systemd/system/builddird.service" \
    || { echo "error: ExecStart= of systemd/builddird.service not rewritten" >&2; exit 1; }
chmod 0644 "$pkg/usr/lib/systemd/system/builddird.service"
install -m 0644 "$repo/systemd/builddird.sysusers.conf" "$pkg/usr/lib/sysusers.d/builddird.conf"
install -m 0644 "$repo/README.md" "$repo"/docs/*.md "$pkg/usr/share/doc/builddird/"
install -m 0644 "$repo/packaging/config.example.toml" "$pkg/usr/share/doc/builddird/examples/config.toml"
cat > "$pkg/usr/share/doc/builddird/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: builddird
License: MIT OR Apache-2.0
EOF
for s in postinst prerm postrm; do
    install -m 0755 "$here/$s" "$pkg/DEBIAN/$s"
done

# The C library the binaries link against, as dpkg-shlibdeps states it when
# available (dpkg-dev), else the highest GLIBC_ symbol version they use.
depends=
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$stage/src/debian"
    printf 'Source: builddird\n\nPackage: builddird\nArchitecture: any\n' > "$stage/src/debian/control"
    depends=$(cd "$stage/src" && dpkg-shlibdeps -O "$pkg/usr/bin/builddird" "$pkg/usr/bin/builddir-ctl" 2>/dev/null \
        | sed -n 's/^shlibs:Depends=//p') || depends=
fi
if [ -z "$depends" ]; then
    glibc=$(grep -aoh 'GLIBC_[0-9][0-9.]*' "$pkg/usr/bin/builddird" "$pkg/usr/bin/builddir-ctl" \
        | sed 's/GLIBC_//' | sort -V | tail -1)
    depends="libc6 (>= ${glibc:-2.34})"
fi
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<EOF
Package: builddird
Version: $version
Architecture: $arch
Maintainer: builddird developers <builddird@example.invalid>
Installed-Size: $size
Depends: $depends
Recommends: systemd
Section: admin
Priority: optional
Homepage: https://example.invalid/builddird
Description: build-directory helper daemon (exec-capable, race-free scratch dirs)
 builddird owns a dedicated nosuid,nodev,exec mount, creates one directory per
 build by file descriptor, hands it to the unprivileged build orchestrator over
 a Unix socket, and deletes the tree safely when the build ends.
 .
 With systemd the package enables builddird.socket; members of the group
 "builddir" may connect. builddir-ctl runs a command in a fresh directory:
 builddir-ctl run -- make
EOF

mkdir -p "$out_dir"
deb=$out_dir/builddird_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
