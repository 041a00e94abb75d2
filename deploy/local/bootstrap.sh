#!/usr/bin/env bash
# Idempotent set-up for Debian bookworm: PostgreSQL 15 + TimescaleDB (Apache edition, built
# from Debian trixie's source package), Mosquitto, Chromium (headless, for the docs test), and the
# project's .venv with its test extra.
# A second run with everything present only checks and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PG_MAJOR=15
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
PKGLIBDIR="/usr/lib/postgresql/${PG_MAJOR}/lib"
EXTDIR="/usr/share/postgresql/${PG_MAJOR}/extension"
CACHE="${HEATREC_BOOTSTRAP_CACHE:-/var/cache/heatrec-bootstrap}"
VENV="${ROOT}/.venv"
PYTHON="${PYTHON:-python3}"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run '$*': run 'make setup' as root or install sudo"; fi
}

missing_debs() {
    local p out=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out+=("$p")
    done
    printf '%s\n' "${out[@]:-}" | sed '/^$/d'
}

APT_UPDATED=0
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing Debian packages: $*"
    # Keep package scripts from starting system services (a system Mosquitto on 1883 or a
    # PostgreSQL on 5432 would collide with the demo's own private servers).
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added=1
    fi
    local rc=0 log
    log="$(mktemp)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 || rc=$?
    [ "$added" -eq 1 ] && as_root rm -f "$policy"
    if [ "$rc" -ne 0 ]; then tail -n 30 "$log" >&2; die "apt-get install failed for: $*"; fi
    rm -f "$log"
}

# 1. Debian packages --------------------------------------------------------------------
DEBS=(postgresql-${PG_MAJOR} postgresql-client-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR}
      mosquitto mosquitto-clients cmake make gcc libssl-dev xz-utils ca-certificates python3-venv
      prometheus wrk jq chromium chromium-driver fonts-dejavu-core curl)
# systemd-analyze verifies deploy/systemd/heatrec.service in the tests (a minimal image may lack systemd;
# installing the package starts nothing where systemd is not PID 1).
command -v systemd-analyze >/dev/null 2>&1 || DEBS+=(systemd)
# promtool lints /metrics in the tests (the daemon is never started); wrk loads bench_api; jq reads
# var/demo/credentials.json in the README's commands; headless chromium renders /docs and /redoc offline
# in tests/service/test_api_docs_offline.py, with DejaVu so the text is drawn (no recommended fonts here).
# chromium-driver lets Selenium drive that same browser in the console's tests (tests/ui/).
# curl runs the simulator control endpoint's commands of docs/simulators.md as written (a test does).
# Node.js and npm type-check the Grafana dashboards in the tests; any node on PATH will do.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || DEBS+=(nodejs npm)
mapfile -t NEED < <(missing_debs "${DEBS[@]}")
if [ "${#NEED[@]}" -gt 0 ]; then apt_install "${NEED[@]}"; else say "Debian packages present"; fi
# The prometheus package enables its daemon for the next boot; nothing here wants a server on :9090.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
    as_root systemctl disable prometheus >/dev/null 2>&1 || true
fi

# 2. TimescaleDB from trixie's source package --------------------------------------------
if [ -f "${EXTDIR}/timescaledb.control" ] && ls "${PKGLIBDIR}"/timescaledb*.so >/dev/null 2>&1; then
    say "TimescaleDB present ($(sed -n "s/^default_version = '\(.*\)'/\1/p" "${EXTDIR}/timescaledb.control"))"
else
    say "building TimescaleDB (Apache edition) from Debian trixie's source package"
    as_root mkdir -p "${CACHE}/lists/partial" "${CACHE}/src"
    # Take the mirror from the machine's own apt configuration (never hard-coded here).
    MIRROR="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
    [ -n "$MIRROR" ] || MIRROR="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' | head -n1 || true)"
    [ -n "$MIRROR" ] || die "cannot find a Debian mirror in /etc/apt/sources.list(.d); add one and rerun"
    LIST="${CACHE}/trixie-src.list"
    as_root sh -c "echo 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${MIRROR} trixie main' > '${LIST}'"
    APTOPT=(-oDir::Etc::SourceList="${LIST}" -oDir::Etc::SourceParts=/dev/null -oDir::State::Lists="${CACHE}/lists")
    as_root apt-get "${APTOPT[@]}" update -qq
    ( cd "${CACHE}/src" && as_root apt-get "${APTOPT[@]}" source --download-only timescaledb >/dev/null )
    ORIG="$(ls -1 "${CACHE}"/src/timescaledb_*.orig.tar.* | sort -V | tail -n1)"
    [ -n "$ORIG" ] || die "timescaledb source download failed"
    BUILD="${CACHE}/build"
    as_root rm -rf "${BUILD}"; as_root mkdir -p "${BUILD}"
    as_root tar -xf "${ORIG}" -C "${BUILD}" --strip-components=1
    say "compiling (about a minute on 2 cores; log: ${CACHE}/build.log)"
    ( cd "${BUILD}" && as_root ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF -DPG_CONFIG="${PG_CONFIG}" \
      && as_root make -C build -j"$(nproc)" install ) >"${CACHE}/build.log" 2>&1 \
      || { tail -n 30 "${CACHE}/build.log" >&2; die "TimescaleDB build failed (log: ${CACHE}/build.log)"; }
    [ -f "${EXTDIR}/timescaledb.control" ] || die "TimescaleDB build finished but timescaledb.control is missing"
    say "TimescaleDB installed"
fi

# 3. Python virtual environment ----------------------------------------------------------
STAMP="${VENV}/.heatrec-installed"
want="$(cat "${ROOT}/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -x "${VENV}/bin/heatrec" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say ".venv up to date"
else
    [ -x "${VENV}/bin/python" ] || { say "creating .venv"; "$PYTHON" -m venv "${VENV}"; }
    say "installing heatrec and its test extra into .venv"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    piplog="$(mktemp)"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check -e "${ROOT}[test]" >"$piplog" 2>&1 \
        || { tail -n 30 "$piplog" >&2; die "pip install of heatrec and its test extra failed"; }
    rm -f "$piplog"
    echo "$want" > "$STAMP"
fi
say "ready: ${VENV}/bin/heatrec"
