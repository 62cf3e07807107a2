#!/bin/sh
# Install wrk, the HTTP load tool of the quota look-up benchmark (bench/quota.py; its tiny
# run is part of `make test`). Idempotent: returns at once when wrk is there. Needs root and
# apt. Under 1 MB.
set -eu

command -v wrk >/dev/null 2>&1 && exit 0

echo "ensure-wrk: installing wrk" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-wrk: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts="-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3"
apt-get $apt_opts install -y -q --no-install-recommends wrk || {
    apt-get $apt_opts update -q
    apt-get $apt_opts install -y -q --no-install-recommends wrk
}

if ! command -v wrk >/dev/null 2>&1; then
    echo "ensure-wrk: wrk still missing after install" >&2
    exit 1
fi
