#!/bin/sh
# Install LibreOffice Calc (headless), which the report tests use to prove the XLSX opens in a
# second, independent reader (`soffice --headless --convert-to csv`). Idempotent: returns at
# once when soffice is there. Needs root and apt. About 25 MB, 15 s.
set -eu

command -v soffice >/dev/null 2>&1 && exit 0

echo "ensure-libreoffice: installing libreoffice-calc-nogui" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-libreoffice: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts="-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3"
apt-get $apt_opts update -q
apt-get $apt_opts install -y -q --no-install-recommends libreoffice-calc-nogui

if ! command -v soffice >/dev/null 2>&1; then
    echo "ensure-libreoffice: soffice still missing after install" >&2
    exit 1
fi
