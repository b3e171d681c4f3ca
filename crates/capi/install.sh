#!/bin/sh
# Builds libbuilddir and installs the header, the shared and static
# libraries and the pkg-config file.
#
#   crates/capi/install.sh [PREFIX]          (default /usr/local)
#
# Environment: LIBDIR (default PREFIX/lib), DESTDIR (staged installs, for
# packagers), BUILDDIR_LIB_FROM=DIR (install libbuilddir.so/.a already
# built in DIR instead of running `cargo build --release`).
set -eu

prefix=${1:-${PREFIX:-/usr/local}}
libdir=${LIBDIR:-$prefix/lib}
includedir=$prefix/include
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dest=${DESTDIR:-}

if [ -n "${BUILDDIR_LIB_FROM:-}" ]; then
    from=$BUILDDIR_LIB_FROM
else
    cargo build --release --locked -p builddir-capi --manifest-path "$root/Cargo.toml"
    from=${CARGO_TARGET_DIR:-$root/target}/release
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)

install -d "$dest$includedir" "$dest$libdir/pkgconfig"
install -m 0644 "$here/include/builddir.h" "$dest$includedir/builddir.h"
install -m 0755 "$from/libbuilddir.so" "$dest$libdir/libbuilddir.so.$version"
ln -sf "libbuilddir.so.$version" "$dest$libdir/libbuilddir.so.0"
ln -sf "libbuilddir.so.0" "$dest$libdir/libbuilddir.so"
install -m 0644 "$from/libbuilddir.a" "$dest$libdir/libbuilddir.a"
sed -e "s|@prefix@|$prefix|" -e "s|@libdir@|$libdir|" \
    -e "s|@includedir@|$includedir|" -e "s|@version@|$version|" \
    "$here/builddir.pc.in" > "$dest$libdir/pkgconfig/builddir.pc"
chmod 0644 "$dest$libdir/pkgconfig/builddir.pc"

# An install into the system's library directories refreshes the linker
# cache (not a staged one, nor one into a private prefix).
if [ -z "$dest" ] && [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null 2>&1; then
    case $libdir in
        /lib*|/usr/lib*|/usr/local/lib*)
            ldconfig || echo "install.sh: warning: ldconfig failed; run it by hand" >&2 ;;
    esac
fi
echo "installed libbuilddir $version: $includedir/builddir.h, $libdir/libbuilddir.{so,a}, $libdir/pkgconfig/builddir.pc"
