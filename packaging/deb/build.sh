#!/bin/sh
# Builds the Debian packages of cachem with dpkg's own helpers (dpkg-gencontrol,
# dpkg-shlibdeps, dpkg-gensymbols, dpkg-deb) from artifacts `make deb` has
# already built:
#   target/release/cachem                       the CLI (crates/cachem-cli)
#   $LIBSTAGE (make install DESTDIR=...)        libcachem.so.0 (+ .so link), libcachem.a,
#                                               cachem.h, cachem.pc, cachem.map
#   target/assets/{man,completions}             make assets
#   MODDIR/mod_cachem{,_example}.so             apxs, linked with the capi-profile libcachem.a
# The packages and their fields are in packaging/deb/control (a debian/control),
# the version in packaging/deb/changelog (a debian/changelog), whose upstream
# part must be Cargo.toml's version. Into OUTDIR go:
#   libcachem0, libcachem-dev, cachem, libapache2-mod-cachem,
#   libapache2-mod-cachem-example   (each <name>_<version>-<rev>_<arch>.deb)
# Usage: packaging/deb/build.sh OUTDIR LIBSTAGE MODDIR
set -eu
cd "$(dirname "$0")/../.."
TOP=$(pwd)
OUT=$1
LIBSTAGE=$2
BUILT_MODS=$3
HERE=$TOP/packaging/deb

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || { echo "no version in Cargo.toml" >&2; exit 1; }
DEBVERSION=$(dpkg-parsechangelog -l "$HERE/changelog" -S Version)
[ "${DEBVERSION%-*}" = "$VERSION" ] || {
	echo "packaging/deb/changelog's top entry is $DEBVERSION, Cargo.toml says $VERSION: add a changelog entry" >&2
	exit 1
}
ARCH=$(dpkg --print-architecture)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
LIBDIR=usr/lib/$MULTIARCH
APXS=${APXS:-apxs}
MODDIR=$($APXS -q LIBEXECDIR)
INCDIR=$($APXS -q INCLUDEDIR)
MMN=$(sed -n 's/^#define MODULE_MAGIC_NUMBER_MAJOR \([0-9]*\).*/\1/p' "$INCDIR/ap_mmn.h")
[ -n "$MMN" ] || { echo "no MODULE_MAGIC_NUMBER_MAJOR in $INCDIR/ap_mmn.h" >&2; exit 1; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cachem-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# A minimal source tree: dpkg-gencontrol, dpkg-shlibdeps and dpkg-gensymbols
# read debian/control and debian/changelog from the current directory.
mkdir -p "$WORK/src/debian"
cp "$HERE/control" "$HERE/changelog" "$WORK/src/debian/"
PACKAGES=$(sed -n 's/^Package: //p' "$HERE/control")

# Strips like dh_strip: no debug info, no .comment or .note sections.
strip_elf() { strip --strip-unneeded --remove-section=.comment --remove-section=.note "$@"; }

# Every package: its root, /usr/share/doc/<package> with the copyright, the
# Debian changelog and the upstream one, and its lintian overrides.
for p in $PACKAGES; do
	d=$WORK/$p
	install -d "$d/DEBIAN" "$d/usr/share/doc/$p"
	install -m 644 "$HERE/copyright" "$d/usr/share/doc/$p/copyright"
	gzip -9n < "$HERE/changelog" > "$d/usr/share/doc/$p/changelog.Debian.gz"
	gzip -9n < CHANGELOG.md > "$d/usr/share/doc/$p/changelog.gz"
	install -d "$d/usr/share/lintian/overrides"
	cat "$HERE/lintian-overrides" > "$d/usr/share/lintian/overrides/$p"
	[ ! -f "$HERE/$p.lintian-overrides" ] || cat "$HERE/$p.lintian-overrides" >> "$d/usr/share/lintian/overrides/$p"
	for s in preinst postinst prerm postrm; do
		[ -f "$HERE/$p.$s" ] && install -m 755 "$HERE/$p.$s" "$d/DEBIAN/$s"
	done
	: > "$WORK/$p.substvars"
done

# --- libcachem0: the shared library ---------------------------------------
P=$WORK/libcachem0
install -d "$P/$LIBDIR"
install -m 644 "$LIBSTAGE/$LIBDIR/libcachem.so.0" "$P/$LIBDIR/libcachem.so.0"
strip_elf "$P/$LIBDIR/libcachem.so.0"
SONAME=$(objdump -p "$P/$LIBDIR/libcachem.so.0" | sed -n 's/^ *SONAME *//p')
[ "$SONAME" = "libcachem.so.0" ] || { echo "libcachem.so.0 has SONAME '$SONAME'" >&2; exit 1; }
# Debian policy 8.6: shlibs and symbols files, and the ldconfig trigger.
echo "libcachem 0 libcachem0 (>= $VERSION)" > "$P/DEBIAN/shlibs"
echo "activate-noawait ldconfig" > "$P/DEBIAN/triggers"
# The symbols file: packaging/deb/libcachem0.symbols lists every exported
# symbol with the version that added it; -c1 fails the build when one
# disappears (an ABI break needs a new SONAME). A new symbol is accepted and
# gets this version; add it to the file.
(cd "$WORK/src" && dpkg-gensymbols -q -c1 -plibcachem0 -P"$P" -v"$VERSION" \
	-I"$HERE/libcachem0.symbols" -e"$P/$LIBDIR/libcachem.so.0" -O"$P/DEBIAN/symbols")

# --- libcachem-dev: header, static library, .so link, pkg-config, map ------
D=$WORK/libcachem-dev
install -d "$D/$LIBDIR/pkgconfig" "$D/usr/include" "$D/usr/share/cachem"
install -m 644 "$LIBSTAGE/usr/include/cachem.h" "$D/usr/include/cachem.h"
install -m 644 "$LIBSTAGE/$LIBDIR/libcachem.a" "$D/$LIBDIR/libcachem.a"
strip --strip-debug --remove-section=.comment --remove-section=.note "$D/$LIBDIR/libcachem.a"
ln -s libcachem.so.0 "$D/$LIBDIR/libcachem.so"
install -m 644 "$LIBSTAGE/$LIBDIR/pkgconfig/cachem.pc" "$D/$LIBDIR/pkgconfig/cachem.pc"
install -m 644 "$LIBSTAGE/usr/share/cachem/cachem.map" "$D/usr/share/cachem/cachem.map"
# The version cachem.pc announces must be the package's.
PCV=$(sed -n 's/^Version: //p' "$D/$LIBDIR/pkgconfig/cachem.pc")
[ "$PCV" = "$VERSION" ] || { echo "cachem.pc says version $PCV, Cargo.toml $VERSION" >&2; exit 1; }

# --- cachem: the tool, man pages, completions, docs -------------------------
C=$WORK/cachem
install -d "$C/usr/bin" "$C/usr/share/man/man1" "$C/usr/share/bash-completion/completions" \
	"$C/usr/share/zsh/vendor-completions" "$C/usr/share/fish/vendor_completions.d"
install -m 755 target/release/cachem "$C/usr/bin/cachem"
strip_elf "$C/usr/bin/cachem"
for f in target/assets/man/*.1; do
	gzip -9n < "$f" > "$C/usr/share/man/man1/$(basename "$f").gz"
done
install -m 644 target/assets/completions/cachem.bash "$C/usr/share/bash-completion/completions/cachem"
install -m 644 target/assets/completions/_cachem "$C/usr/share/zsh/vendor-completions/_cachem"
install -m 644 target/assets/completions/cachem.fish "$C/usr/share/fish/vendor_completions.d/cachem.fish"
install -m 644 README.md "$C/usr/share/doc/cachem/README.md"
for d in operations format design c-api; do
	[ -f docs/$d.md ] && gzip -9n < docs/$d.md > "$C/usr/share/doc/cachem/$d.md.gz"
done

# --- libapache2-mod-cachem: the module, its conffiles, mod_cachem.h ---------
A=$WORK/libapache2-mod-cachem
install -d "$A$MODDIR" "$A/etc/apache2/mods-available" "$A$INCDIR"
install -m 644 "$BUILT_MODS/mod_cachem.so" "$A$MODDIR/mod_cachem.so"
strip_elf "$A$MODDIR/mod_cachem.so"
install -m 644 "$HERE/cachem.load" "$HERE/cachem.conf" "$A/etc/apache2/mods-available/"
install -m 644 apache/mod_cachem.h "$A$INCDIR/mod_cachem.h"
for d in apache operations; do
	[ -f docs/$d.md ] && gzip -9n < docs/$d.md > "$A/usr/share/doc/libapache2-mod-cachem/$d.md.gz"
done
printf '%s\n' /etc/apache2/mods-available/cachem.load /etc/apache2/mods-available/cachem.conf \
	> "$A/DEBIAN/conffiles"

# --- libapache2-mod-cachem-example: the example consumer module ------------
E=$WORK/libapache2-mod-cachem-example
install -d "$E$MODDIR" "$E/etc/apache2/mods-available"
install -m 644 "$BUILT_MODS/mod_cachem_example.so" "$E$MODDIR/mod_cachem_example.so"
strip_elf "$E$MODDIR/mod_cachem_example.so"
install -m 644 "$HERE/cachem_example.load" "$E/etc/apache2/mods-available/"
install -m 644 apache/mod_cachem_example.c "$E/usr/share/doc/libapache2-mod-cachem-example/mod_cachem_example.c"
echo /etc/apache2/mods-available/cachem_example.load > "$E/DEBIAN/conffiles"

# --- control files, md5sums, dpkg-deb ---------------------------------------
# Run-time dependencies of the ELF files, as dpkg-shlibdeps computes them.
shlibdeps() {
	p=$1; shift
	(cd "$WORK/src" && dpkg-shlibdeps -T"$WORK/$p.substvars" "$@")
}
shlibdeps libcachem0 "$P/$LIBDIR/libcachem.so.0"
shlibdeps cachem "$C/usr/bin/cachem"
# Modules are plugins: their httpd and APR symbols resolve in the server.
shlibdeps libapache2-mod-cachem --warnings=2 "$A$MODDIR/mod_cachem.so"
shlibdeps libapache2-mod-cachem-example --warnings=2 "$E$MODDIR/mod_cachem_example.so"
echo "apache2:Depends=apache2-api-$MMN" >> "$WORK/libapache2-mod-cachem.substvars"
echo "apache2:Depends=apache2-api-$MMN" >> "$WORK/libapache2-mod-cachem-example.substvars"
for p in $PACKAGES; do
	d=$WORK/$p
	(cd "$WORK/src" && dpkg-gencontrol -p"$p" -P"$d" -T"$WORK/$p.substvars" -f"$WORK/files")
	(cd "$d" && find . -path ./DEBIAN -prune -o -type f -print0 | sed -z 's|^\./||' | sort -z \
		| xargs -0 -r md5sum) > "$d/DEBIAN/md5sums"
	# Directories and executables 0755, everything else 0644, whatever the
	# umask (Debian policy 10.9).
	find "$d" -type d -exec chmod 755 {} +
	find "$d" -type f ! -perm -u+x -exec chmod 644 {} +
	dpkg-deb --root-owner-group -Zxz --build "$d" "$OUT/${p}_${DEBVERSION}_${ARCH}.deb" >/dev/null
done
ls -l "$OUT"/*_"$DEBVERSION"_"$ARCH".deb
