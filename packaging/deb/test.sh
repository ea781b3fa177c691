#!/bin/sh
# The install test of the Debian packages (make deb-test). As root:
#  0. lintian on every package: any error or warning fails the test (the
#     overrides the packages carry are in packaging/deb/lintian-overrides);
#  1. install all five packages (libcachem0, libcachem-dev, cachem,
#     libapache2-mod-cachem, libapache2-mod-cachem-example) with dpkg;
#  2. check the CLI, its man pages and completions, and the C library: a C
#     program built with `pkg-config --cflags --libs cachem` (libcachem-dev)
#     runs against libcachem.so.0 (libcachem0) found by the dynamic loader;
#  3. a2enmod cachem; start the packaged /usr/sbin/apache2 with a config of
#     its own (-f, -DFOREGROUND) on a free 127.0.0.1 port that includes
#     /etc/apache2/mods-enabled/cachem.{load,conf}; read the cachem section
#     of /server-status?auto; the packaged CLI and the C program both work
#     on the module's region, and the status shows their record; then
#     a2enmod cachem_example, a graceful restart that loads it, and its
#     handler answers;
#  4. stop httpd by its own pid (SIGTERM), a2dismod both modules, purge all
#     packages, and check that no file of any package, no a2enmod state
#     and no process of the test is left, and that the set of paths named
#     *cachem* under /usr, /etc and /var/lib is the one found at the start.
# Every wait is bounded. On any failure the EXIT trap stops httpd and purges.
set -eu
DEBDIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/../.."
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
DEBVERSION=$(dpkg-parsechangelog -l packaging/deb/changelog -S Version)
ARCH=$(dpkg --print-architecture)
PACKAGES=$(sed -n 's/^Package: //p' packaging/deb/control)
# Removal order: the dependents first.
PURGE_ORDER="libapache2-mod-cachem-example libapache2-mod-cachem cachem libcachem-dev libcachem0"
# shellcheck disable=SC2086
[ "$(printf '%s\n' $PACKAGES | sort)" = "$(printf '%s\n' $PURGE_ORDER | sort)" ] \
	|| { echo "deb-test: packaging/deb/control names other packages than PURGE_ORDER" >&2; exit 1; }
DEBS=
for p in $PACKAGES; do DEBS="$DEBS $DEBDIR/${p}_${DEBVERSION}_${ARCH}.deb"; done
T0=$(date +%s)

say() { echo "deb-test: $*"; }
fail() { echo "deb-test: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (it installs packages)"
for f in $DEBS; do [ -f "$f" ] || fail "no $f (run make deb)"; done
for p in $PACKAGES; do
	if dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q 'installed\|config-files'; then
		fail "$p is already on this machine; the test installs and purges it (dpkg -P $p first)"
	fi
done
# What the test needs besides the packages (apache2 provides apache2-api-*).
missing=
for p in apache2 apache2-utils curl pkg-config gcc libc6-dev man-db lintian; do
	dpkg -s $p >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
	apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y $missing >/dev/null
fi

snapshot() { find /usr /etc /var/lib -xdev -iname '*cachem*' 2>/dev/null | sort; }
apache_tree() { find /etc/apache2 /var/lib/apache2 2>/dev/null | sort; }
BEFORE=$(snapshot)
APACHE_BEFORE=$(apache_tree)
# a2enmod and a2dismod make these state directories when they first run.
STATE_DIRS=
for d in /var/lib/apache2/module/enabled_by_admin /var/lib/apache2/module/disabled_by_admin; do
	[ -d "$d" ] || STATE_DIRS="$STATE_DIRS $d"
done

T=$(mktemp -d /tmp/cachem-deb-test.XXXXXX)
chmod 755 "$T"
printf '%s\n' "$APACHE_BEFORE" > "$T/apache-before"
printf '%s\n' "$BEFORE" > "$T/before"
HTTPD_PID=
cleanup() {
	rc=$?
	if [ -n "$HTTPD_PID" ] && kill -0 "$HTTPD_PID" 2>/dev/null; then
		kill -TERM "$HTTPD_PID" 2>/dev/null || true
		i=0; while kill -0 "$HTTPD_PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		kill -KILL -"$HTTPD_PID" 2>/dev/null || true
	fi
	if [ $rc -ne 0 ]; then
		[ -f "$T/error.log" ] && { echo "--- httpd error.log"; tail -n 30 "$T/error.log"; } >&2
		# shellcheck disable=SC2086
		dpkg -P $PURGE_ORDER >/dev/null 2>&1 || true
		for d in $STATE_DIRS; do rmdir "$d" 2>/dev/null || true; done
	fi
	rm -rf "$T"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 0. lintian -----------------------------------------------------------
# Errors (E:) and warnings (W:) fail; info (I:), pedantic (P:) and
# overridden (O:) tags are shown, not fatal.
# shellcheck disable=SC2086
lintian --fail-on none --display-info --pedantic --show-overrides $DEBS >"$T/lintian.log" 2>&1 \
	|| { cat "$T/lintian.log" >&2; fail "lintian did not run"; }
sed 's/^/  /' "$T/lintian.log"
! grep -q '^[EW]: ' "$T/lintian.log" || fail "lintian reports errors or warnings"
say "lintian: no error or warning in$(printf ' %s' $PACKAGES)"

# ---- 1. install ----------------------------------------------------------
say "installing$(for f in $DEBS; do printf ' %s' "$(basename "$f")"; done)"
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive dpkg -i $DEBS >"$T/dpkg.log" 2>&1 || { cat "$T/dpkg.log"; fail "dpkg -i"; }

# ---- 2. the cachem package ------------------------------------------------
[ "$(cachem --version)" = "cachem $VERSION" ] || fail "cachem --version: $(cachem --version)"
for p in cachem cachem-stat cachem-create; do
	man -w "$p" >/dev/null 2>&1 || fail "no man page $p"
done
[ -f /usr/share/bash-completion/completions/cachem ] || fail "no bash completion"
[ -f /usr/share/zsh/vendor-completions/_cachem ] || fail "no zsh completion"
[ -f /usr/share/fish/vendor_completions.d/cachem.fish ] || fail "no fish completion"
[ "$(pkg-config --modversion cachem)" = "$VERSION" ] || fail "pkg-config --modversion cachem"
ldconfig -p | grep -q 'libcachem.so.0 ' || fail "libcachem.so.0 is not in the loader cache (ldconfig trigger)"
cat > "$T/use.c" <<'EOF'
#include <cachem.h>
#include <stdio.h>
#include <string.h>
/* argv[1]: a region path (attach at its size); adds one record owned by
 * "deb-test", prints its index. Without arguments: an anonymous region. */
int main(int argc, char **argv) {
    cachem_error_t e = CACHEM_OK;
    cachem_t *c = cachem_open(argc > 1 ? argv[1] : NULL, argc > 1 ? 0 : 65536, NULL, &e);
    if (!c) { fprintf(stderr, "open: %s: %s\n", cachem_strerror(e), cachem_last_error_message(NULL)); return 1; }
    cachem_id_t id = 0;
    cachem_index_t i = 0;
    if ((e = cachem_id(c, "deb-test", &id)) != CACHEM_OK) { fprintf(stderr, "id: %s\n", cachem_strerror(e)); return 1; }
    if ((e = cachem_add(c, "from C", 6, id, &i)) != CACHEM_OK) { fprintf(stderr, "add: %s\n", cachem_strerror(e)); return 1; }
    if ((e = cachem_verify(c)) != CACHEM_OK) { fprintf(stderr, "verify: %s\n", cachem_strerror(e)); return 1; }
    printf("added\n");
    return cachem_close(c) == CACHEM_OK ? 0 : 1;
}
EOF
# shellcheck disable=SC2046
gcc -Wall -o "$T/use" "$T/use.c" $(pkg-config --cflags --libs cachem) || fail "building against the installed library"
ldd "$T/use" | grep -Eq "libcachem.so.0 => (/usr)?/lib/" || fail "use does not link the installed libcachem.so.0: $(ldd "$T/use")"
[ "$("$T/use")" = added ] || fail "the C program on an anonymous region"
say "cachem: CLI $VERSION, man pages, completions, pkg-config and libcachem.so.0 work"

# ---- 3. the module in the packaged httpd -----------------------------------
MODDIR=/usr/lib/apache2/modules
[ -f $MODDIR/mod_cachem.so ] && [ -f $MODDIR/mod_cachem_example.so ] || fail "modules not in $MODDIR"
[ -f /usr/include/apache2/mod_cachem.h ] || fail "no mod_cachem.h"
grep -q '^[[:space:]]*#CACHEM NULL NULL$' /etc/apache2/mods-available/cachem.conf || fail "cachem.conf"
a2enmod -q cachem || fail "a2enmod cachem"
[ -L /etc/apache2/mods-enabled/cachem.load ] && [ -L /etc/apache2/mods-enabled/cachem.conf ] \
	|| fail "a2enmod cachem made no links in mods-enabled"

port_busy() { grep -qi ":$(printf '%04X' "$1") " /proc/net/tcp /proc/net/tcp6 2>/dev/null; }
PORT=
for _ in 1 2 3 4 5 6 7 8 9 10; do
	p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000 ))
	port_busy $p || { PORT=$p; break; }
done
[ -n "$PORT" ] || fail "no free port"
mkdir -p "$T/run" "$T/htdocs"
echo ok > "$T/htdocs/ok.txt"
cat > "$T/httpd.conf" <<EOF
ServerRoot "$T"
ServerName 127.0.0.1
Listen 127.0.0.1:$PORT
PidFile "$T/httpd.pid"
DefaultRuntimeDir "$T/run"
ErrorLog "$T/error.log"
LogLevel warn
LoadModule mpm_prefork_module $MODDIR/mod_mpm_prefork.so
LoadModule authz_core_module $MODDIR/mod_authz_core.so
LoadModule status_module $MODDIR/mod_status.so
# The packaged module, enabled by a2enmod:
Include /etc/apache2/mods-enabled/cachem.load
Include /etc/apache2/mods-enabled/cachem.conf
CACHEM debtest 1M
# The example module, added later by a graceful restart.
IncludeOptional "$T/extra/*.conf"
User www-data
Group www-data
DocumentRoot "$T/htdocs"
<Directory />
	Require all granted
</Directory>
<Location /server-status>
	SetHandler server-status
</Location>
StartServers 2
MinSpareServers 2
MaxSpareServers 4
ServerLimit 4
MaxRequestWorkers 4
EOF
env -i PATH=/usr/sbin:/usr/bin:/bin /usr/sbin/apache2 -f "$T/httpd.conf" -t >"$T/configtest.log" 2>&1 \
	|| { cat "$T/configtest.log"; fail "apache2 -t"; }
setsid env -i PATH=/usr/sbin:/usr/bin:/bin /usr/sbin/apache2 -f "$T/httpd.conf" -DFOREGROUND \
	>"$T/httpd.out" 2>&1 </dev/null &
HTTPD_PID=$!
status() { curl -sf --max-time 5 "http://127.0.0.1:$PORT/server-status?auto"; }
i=0
until status >"$T/status.txt" 2>/dev/null; do
	kill -0 "$HTTPD_PID" 2>/dev/null || { cat "$T/httpd.out"; fail "httpd exited at start"; }
	i=$((i + 1)); [ $i -lt 150 ] || fail "httpd did not answer within 15 s"
	sleep 0.1
done
grep -q '^CachemAvailable: 1$' "$T/status.txt" || { cat "$T/status.txt"; fail "no cachem section in server-status?auto"; }
grep -q "^CachemRegion: $T/run/debtest$" "$T/status.txt" || { grep Cachem "$T/status.txt"; fail "CachemRegion"; }
grep -q '^CachemSize: 1048576$' "$T/status.txt" || fail "CachemSize"
R0=$(sed -n 's/^CachemRecords: //p' "$T/status.txt")
say "httpd $HTTPD_PID on 127.0.0.1:$PORT: server-status?auto has the cachem section ($R0 records)"

# The packaged CLI and library on the module's region, as the children's user.
runuser -u www-data -- "$T/use" "$T/run/debtest" >/dev/null || fail "the C program on the module's region"
runuser -u www-data -- cachem verify "$T/run/debtest" >/dev/null || fail "cachem verify on the module's region"
runuser -u www-data -- cachem ls "$T/run/debtest" --owner deb-test | grep -q ' deb-test ' || fail "cachem ls"
runuser -u www-data -- cachem stat "$T/run/debtest" --format prometheus >"$T/prom.txt" || fail "cachem stat --format prometheus"
grep -q "^cachem_owner_records{region=\"$T/run/debtest\",owner_id=\"[0-9]*\",owner=\"deb-test\"} 1$" "$T/prom.txt" \
	|| { cat "$T/prom.txt"; fail "the C program's record is not in the Prometheus figures"; }
status >"$T/status2.txt" || fail "server-status after the C program"
R1=$(sed -n 's/^CachemRecords: //p' "$T/status2.txt")
[ "$R1" = $((R0 + 1)) ] || fail "server-status shows $R1 records, expected $((R0 + 1))"
say "CLI and C library work on the module's region; server-status shows their record"

# The example package: a2enmod, then a graceful restart (SIGUSR1) loads it.
a2enmod -q cachem_example || fail "a2enmod cachem_example"
[ -L /etc/apache2/mods-enabled/cachem_example.load ] || fail "a2enmod cachem_example made no link"
mkdir -p "$T/extra"
cat > "$T/extra/example.conf" <<EOF
Include /etc/apache2/mods-enabled/cachem_example.load
<Location /example>
	SetHandler cachem-example
</Location>
EOF
env -i PATH=/usr/sbin:/usr/bin:/bin /usr/sbin/apache2 -f "$T/httpd.conf" -t >"$T/configtest.log" 2>&1 \
	|| { cat "$T/configtest.log"; fail "apache2 -t with cachem_example"; }
kill -USR1 "$HTTPD_PID"
i=0
until curl -sf --max-time 5 "http://127.0.0.1:$PORT/example" >"$T/example.txt" 2>/dev/null \
	&& grep -q '^hits [0-9]' "$T/example.txt"; do
	kill -0 "$HTTPD_PID" 2>/dev/null || { cat "$T/httpd.out"; fail "httpd exited at the graceful restart"; }
	i=$((i + 1)); [ $i -lt 150 ] || { cat "$T/example.txt"; fail "no answer from cachem_example within 15 s"; }
	sleep 0.1
done
grep -q '^owner [0-9]* ' "$T/example.txt" || { cat "$T/example.txt"; fail "cachem_example's answer"; }
say "the example module answers after a2enmod cachem_example and a graceful restart"

# ---- 4. stop, disable, purge, check ---------------------------------------
kill -TERM "$HTTPD_PID"
i=0
while kill -0 "$HTTPD_PID" 2>/dev/null; do
	i=$((i + 1)); [ $i -lt 200 ] || fail "httpd did not stop within 20 s of SIGTERM"
	sleep 0.1
done
wait "$HTTPD_PID" 2>/dev/null || true
# No process of its session (children, mod_cachem's reaper) may outlive it.
i=0
while ps -eo sid= | grep -qx " *$HTTPD_PID"; do
	i=$((i + 1)); [ $i -lt 100 ] || fail "processes of httpd's session remain: $(ps -eo pid,sid,cmd | awk -v s="$HTTPD_PID" '$2 == s')"
	sleep 0.1
done
HTTPD_PID=
a2dismod -q cachem_example || fail "a2dismod cachem_example"
a2dismod -q cachem || fail "a2dismod cachem"
[ ! -e /etc/apache2/mods-enabled/cachem.load ] || fail "a2dismod left mods-enabled/cachem.load"
[ ! -e /etc/apache2/mods-enabled/cachem_example.load ] || fail "a2dismod left mods-enabled/cachem_example.load"

FILES=$(for f in $DEBS; do dpkg-deb -c "$f"; done | awk '$1 !~ /^d/ { print $6 }' | sed 's|^\.||')
say "purging$(printf ' %s' $PURGE_ORDER)"
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive dpkg -P $PURGE_ORDER >"$T/purge.log" 2>&1 || { cat "$T/purge.log"; fail "dpkg -P"; }
for p in $PACKAGES; do
	if dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q 'installed\|config-files'; then fail "$p still known to dpkg"; fi
done
for f in $FILES; do
	[ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f is left after the purge"
done
for f in /etc/apache2/mods-enabled/cachem.load /etc/apache2/mods-enabled/cachem.conf \
	/etc/apache2/mods-enabled/cachem_example.load \
	/var/lib/apache2/module/enabled_by_admin/cachem /var/lib/apache2/module/disabled_by_admin/cachem \
	/var/lib/apache2/module/enabled_by_admin/cachem_example /var/lib/apache2/module/disabled_by_admin/cachem_example; do
	[ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f is left after the purge"
done
ldconfig -p | grep -q 'libcachem.so' && fail "libcachem is still in the loader cache"
for d in $STATE_DIRS; do rmdir "$d" || fail "$d is not empty after the purge"; done
[ "$APACHE_BEFORE" = "$(apache_tree)" ] || fail "/etc/apache2 or /var/lib/apache2 changed: $(apache_tree | diff "$T/apache-before" - )"
AFTER=$(snapshot)
[ "$BEFORE" = "$AFTER" ] || fail "paths named *cachem* changed: $(snapshot | diff "$T/before" -)"
say "ok: lintian-clean, installed, served, purged; nothing of cachem left ($(( $(date +%s) - T0 )) s)"
