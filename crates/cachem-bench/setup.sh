#!/bin/sh
# Installs what `make bench` needs beyond the Rust toolchain: Debian's
# redis-server and memcached. Idempotent: does nothing when both are there.
set -eu
missing=""
[ -x /usr/bin/redis-server ] || missing="$missing redis-server"
[ -x /usr/bin/memcached ] || missing="$missing memcached"
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "cachem-bench: installing$missing" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# The Debian packages start system-wide servers through systemd where there
# is one; the bench starts its own on free ports and never touches those.
