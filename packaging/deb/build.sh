#!/bin/sh
# Builds cachem_<version>_<arch>.deb and libapache2-mod-cachem_<version>_<arch>.deb
# with dpkg-deb from artifacts `make deb` has already built:
#   target/release/cachem                       the CLI (crates/cachem-cli)
#   $STAGE_LIB (make install DESTDIR=...)       libcachem.so.0 (+ .so link), libcachem.a,
#                                               cachem.h, cachem.pc, cachem.map
#   target/assets/{man,completions}             make assets
#   MODDIR/mod_cachem{,_example}.so             apxs, linked with the capi-profile libcachem.a
# Usage: packaging/deb/build.sh OUTDIR LIBSTAGE MODDIR
set -eu
cd "$(dirname "$0")/../.."
OUT=$1
LIBSTAGE=$2
BUILT_MODS=$3
HERE=packaging/deb

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || { echo "no version in Cargo.toml" >&2; exit 1; }
ARCH=$(dpkg --print-architecture)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
MAINT="cachem maintainers <cachem@localhost>"

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cachem-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- cachem ---------------------------------------------------------------
P=$WORK/cachem
install -d "$P/DEBIAN" "$P/usr/bin" "$P/usr/share/man/man1" "$P/usr/share/doc/cachem" \
	"$P/usr/share/bash-completion/completions" "$P/usr/share/zsh/vendor-completions" \
	"$P/usr/share/fish/vendor_completions.d"
install -m 755 -s target/release/cachem "$P/usr/bin/cachem"
cp -a "$LIBSTAGE/." "$P/"
strip --strip-unneeded "$P/usr/lib/$MULTIARCH/libcachem.so.0"
strip --strip-debug --remove-section=.comment --remove-section=.note "$P/usr/lib/$MULTIARCH/libcachem.a"
# The version cachem.pc announces must be the package's.
PCV=$(sed -n 's/^Version: //p' "$P/usr/lib/$MULTIARCH/pkgconfig/cachem.pc")
[ "$PCV" = "$VERSION" ] || { echo "cachem.pc says version $PCV, Cargo.toml $VERSION" >&2; exit 1; }
SONAME=$(objdump -p "$P/usr/lib/$MULTIARCH/libcachem.so.0" | sed -n 's/^ *SONAME *//p')
[ "$SONAME" = "libcachem.so.0" ] || { echo "libcachem.so.0 has SONAME '$SONAME'" >&2; exit 1; }
for f in target/assets/man/*.1; do
	gzip -9n < "$f" > "$P/usr/share/man/man1/$(basename "$f").gz"
done
install -m 644 target/assets/completions/cachem.bash "$P/usr/share/bash-completion/completions/cachem"
install -m 644 target/assets/completions/_cachem "$P/usr/share/zsh/vendor-completions/_cachem"
install -m 644 target/assets/completions/cachem.fish "$P/usr/share/fish/vendor_completions.d/cachem.fish"
install -m 644 $HERE/copyright "$P/usr/share/doc/cachem/copyright"
install -m 644 README.md "$P/usr/share/doc/cachem/README.md"
gzip -9n < CHANGELOG.md > "$P/usr/share/doc/cachem/changelog.gz"
for d in operations format design c-api; do
	[ -f docs/$d.md ] && gzip -9n < docs/$d.md > "$P/usr/share/doc/cachem/$d.md.gz"
done
# The shared library: an ldconfig trigger and a shlibs entry (Debian policy 8.6).
echo "activate-noawait ldconfig" > "$P/DEBIAN/triggers"
echo "libcachem 0 cachem (>= $VERSION)" > "$P/DEBIAN/shlibs"
# Run-time dependencies of the binaries, as dpkg-shlibdeps computes them.
mkdir -p "$WORK/shlibs/debian"
echo "Source: cachem" > "$WORK/shlibs/debian/control"
DEPS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O -e"$P/usr/bin/cachem" -e"$P/usr/lib/$MULTIARCH/libcachem.so.0" 2>/dev/null \
	| sed -n 's/^shlibs:Depends=//p')
SIZE=$(du -sk --exclude=DEBIAN "$P" | cut -f1)
cat > "$P/DEBIAN/control" <<EOF
Package: cachem
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINT
Installed-Size: $SIZE
Depends: $DEPS
Section: utils
Priority: optional
Description: crash-proof shared-memory state records for cooperating processes
 cachem lets cooperating processes on one host share small state records
 through one mapped memory region: insert and delete records, iterate the
 records of an owner, and clean up after a process that exits or is killed,
 even while it held the lock.
 .
 This package holds the cachem command-line tool (with man pages and bash,
 zsh and fish completions) and the C library: libcachem.so.0, libcachem.a,
 cachem.h and cachem.pc.
EOF
(cd "$P" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$P/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz --build "$P" "$OUT/cachem_${VERSION}_${ARCH}.deb" >/dev/null

# --- libapache2-mod-cachem --------------------------------------------------
APXS=${APXS:-apxs}
MODDIR=$($APXS -q LIBEXECDIR)
INCDIR=$($APXS -q INCLUDEDIR)
MMN=$(sed -n 's/^#define MODULE_MAGIC_NUMBER_MAJOR \([0-9]*\).*/\1/p' "$INCDIR/ap_mmn.h")
[ -n "$MMN" ] || { echo "no MODULE_MAGIC_NUMBER_MAJOR in $INCDIR/ap_mmn.h" >&2; exit 1; }
A=$WORK/apache
install -d "$A/DEBIAN" "$A$MODDIR" "$A/etc/apache2/mods-available" "$A$INCDIR" \
	"$A/usr/share/doc/libapache2-mod-cachem"
install -m 644 "$BUILT_MODS/mod_cachem.so" "$A$MODDIR/mod_cachem.so"
install -m 644 "$BUILT_MODS/mod_cachem_example.so" "$A$MODDIR/mod_cachem_example.so"
strip --strip-unneeded "$A$MODDIR/mod_cachem.so" "$A$MODDIR/mod_cachem_example.so"
install -m 644 $HERE/cachem.load $HERE/cachem.conf $HERE/cachem_example.load "$A/etc/apache2/mods-available/"
install -m 644 apache/mod_cachem.h "$A$INCDIR/mod_cachem.h"
install -m 644 $HERE/copyright "$A/usr/share/doc/libapache2-mod-cachem/copyright"
for d in apache operations; do
	[ -f docs/$d.md ] && gzip -9n < docs/$d.md > "$A/usr/share/doc/libapache2-mod-cachem/$d.md.gz"
done
install -m 755 $HERE/apache.prerm "$A/DEBIAN/prerm"
install -m 755 $HERE/apache.postrm "$A/DEBIAN/postrm"
printf '%s\n' /etc/apache2/mods-available/cachem.load /etc/apache2/mods-available/cachem.conf \
	/etc/apache2/mods-available/cachem_example.load > "$A/DEBIAN/conffiles"
ADEPS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O -e"$A$MODDIR/mod_cachem.so" -e"$A$MODDIR/mod_cachem_example.so" 2>/dev/null \
	| sed -n 's/^shlibs:Depends=//p')
SIZE=$(du -sk --exclude=DEBIAN "$A" | cut -f1)
cat > "$A/DEBIAN/control" <<EOF
Package: libapache2-mod-cachem
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINT
Installed-Size: $SIZE
Depends: apache2-api-$MMN${ADEPS:+, $ADEPS}
Section: httpd
Priority: optional
Description: shared-memory state records for Apache httpd modules (mod_cachem)
 mod_cachem makes one cachem region in the Apache parent, shares it with
 every child (prefork, worker and event MPMs), reaps the records of children
 that were killed, shows the region in server-status, and exports the cachem
 API to other modules as APR optional functions (mod_cachem.h).
 .
 Enable it with "a2enmod cachem"; its directives, each with its default, are
 in /etc/apache2/mods-available/cachem.conf. mod_cachem_example.so is a small
 module using the API ("a2enmod cachem_example").
EOF
(cd "$A" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$A/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz --build "$A" "$OUT/libapache2-mod-cachem_${VERSION}_${ARCH}.deb" >/dev/null

ls -l "$OUT"/*_"$VERSION"_"$ARCH".deb
