#!/usr/bin/env bash
# Make sure the server binaries the live labs and tests use are on this machine:
# Postgres (initdb, pg_ctl, pgbench), Redis (redis-server), PgBouncer, and Prometheus
# (lesson 12 scrapes a pool's own statistics with a throwaway one).
#
# Idempotent.  When something is missing and we are root with apt-get, installs
# Debian's packages; it never starts or enables the services (labs starts its own
# throwaway servers): a policy-rc.d refuses every start during the install, and a
# system Prometheus that a package script started all the same (on :9090) is stopped.
# When not root, it says how to install them and exits 0: the tests that need the
# servers skip.
# Set DBPERF_SKIP_SERVICE_INSTALL=1 to only report what is missing.
set -euo pipefail

PACKAGES=(postgresql postgresql-contrib redis-server pgbouncer prometheus)

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
    command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || echo prometheus
}

# Pids of running prometheus programs (not ours to touch unless the install started them).
prometheus_pids() {
    local pid
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = prometheus ] && echo "$pid"
    done
    return 0
}

missing=$(missing_tools | tr '\n' ' ' | sed 's/ $//')
if [ -z "$missing" ]; then
    echo "install-services: Postgres ($(dirname "$(find_pg_tool initdb)")), redis-server, pgbouncer and prometheus present"
    exit 0
fi

hint="apt-get install ${PACKAGES[*]}"
if [ "${DBPERF_SKIP_SERVICE_INSTALL:-}" = 1 ]; then
    echo "install-services: missing $missing (not installing: DBPERF_SKIP_SERVICE_INSTALL=1); live tests will skip"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "install-services: missing $missing; install with: sudo $hint (live tests skip until then)"
    else
        echo "install-services: missing $missing; install Postgres, Redis, PgBouncer and Prometheus with your package manager (live tests skip until then)"
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
before=" $(prometheus_pids | tr '\n' ' ')"
apt-get update -qq
apt-get install -y -qq "${PACKAGES[@]}" >/dev/null

# Debian's prometheus postinst starts a system server on :9090 where it may (systemd, or
# an init script the policy above did not stop): stop the ones the install started.
for pid in $(prometheus_pids); do
    case "$before" in *" $pid "*) continue ;; esac
    echo "install-services: stopping the system prometheus (pid $pid) the package started"
    if command -v invoke-rc.d >/dev/null 2>&1; then
        invoke-rc.d --force prometheus stop >/dev/null 2>&1 || true
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    kill "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -d "/proc/$pid" ] || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
done

missing=$(missing_tools | tr '\n' ' ' | sed 's/ $//')
if [ -n "$missing" ]; then
    echo "install-services: still missing after apt-get: $missing" >&2
    exit 1
fi
echo "install-services: installed; Postgres in $(dirname "$(find_pg_tool initdb)")"
