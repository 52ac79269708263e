#!/usr/bin/env bash
# Make sure the server binaries the live labs and tests use are on this machine:
# Postgres (initdb, pg_ctl, pgbench), Redis (redis-server), and PgBouncer.
#
# Idempotent.  When something is missing and we are root with apt-get, installs
# Debian's packages; it never starts or enables the services (labs starts its own
# throwaway servers).  When not root, it says how to install them and exits 0:
# the tests that need the servers skip.
# Set DBPERF_SKIP_SERVICE_INSTALL=1 to only report what is missing.
set -euo pipefail

PACKAGES=(postgresql postgresql-contrib redis-server pgbouncer)

# Postgres server binaries are often off PATH (Debian: /usr/lib/postgresql/N/bin).
find_pg_tool() {
    local tool=$1 dir
    if command -v "$tool" >/dev/null 2>&1; then
        command -v "$tool"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$dir" ] && [ -x "$dir/$tool" ]; then
            echo "$dir/$tool"
            return 0
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rn); do
        if [ -x "$dir/$tool" ]; then
            echo "$dir/$tool"
            return 0
        fi
    done
    return 1
}

missing_tools() {
    local tool
    for tool in initdb pg_ctl pgbench; do
        find_pg_tool "$tool" >/dev/null || echo "$tool"
    done
    command -v redis-server >/dev/null 2>&1 || echo redis-server
    # Debian installs it in /usr/sbin, which is not on an ordinary user's PATH
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || echo pgbouncer
}

missing=$(missing_tools | tr '\n' ' ' | sed 's/ $//')
if [ -z "$missing" ]; then
    echo "install-services: Postgres ($(dirname "$(find_pg_tool initdb)")), redis-server and pgbouncer present"
    exit 0
fi

hint="apt-get install postgresql postgresql-contrib redis-server pgbouncer"
if [ "${DBPERF_SKIP_SERVICE_INSTALL:-}" = 1 ]; then
    echo "install-services: missing $missing (not installing: DBPERF_SKIP_SERVICE_INSTALL=1); live tests will skip"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "install-services: missing $missing; install with: sudo $hint (live tests skip until then)"
    else
        echo "install-services: missing $missing; install Postgres, Redis and PgBouncer with your package manager (live tests skip until then)"
    fi
    exit 0
fi

echo "install-services: missing $missing; installing ${PACKAGES[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' install scripts from starting the services: a policy-rc.d that
# says "no" (exit 101), unless the machine already has one of its own.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq "${PACKAGES[@]}" >/dev/null

missing=$(missing_tools | tr '\n' ' ' | sed 's/ $//')
if [ -n "$missing" ]; then
    echo "install-services: still missing after apt-get: $missing" >&2
    exit 1
fi
echo "install-services: installed; Postgres in $(dirname "$(find_pg_tool initdb)")"
