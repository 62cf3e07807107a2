#!/bin/sh
# Install what the real-Prometheus integration test needs: Debian's prometheus package, which
# brings promtool (used to backfill kube-state-metrics history into TSDB blocks).
# Idempotent: returns at once when both binaries are there. Needs root and apt.
# The package's postinst may start the system service on :9090; the tests never use it (they
# start their own Prometheus on a free port), so a service this script's install started is
# stopped again through the init system, never by process name.
set -eu
PATH="$PATH:/usr/sbin:/sbin"

need="prometheus promtool"
missing=""
for bin in $need; do
    command -v "$bin" >/dev/null 2>&1 || missing="$missing $bin"
done
[ -z "$missing" ] && exit 0

echo "ensure-prometheus: missing:$missing; installing prometheus" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-prometheus: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run rather than failing on its lock.
apt_opts="-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3"
apt-get $apt_opts update -q
apt-get $apt_opts install -y -q --no-install-recommends prometheus

# Leave no system Prometheus running because of this install.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
elif command -v invoke-rc.d >/dev/null 2>&1; then
    invoke-rc.d prometheus stop >/dev/null 2>&1 || true
fi

for bin in $need; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "ensure-prometheus: $bin still missing after install" >&2
        exit 1
    fi
done
