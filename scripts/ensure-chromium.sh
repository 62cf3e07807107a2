#!/bin/sh
# Install what the console's browser tests need: Debian's headless-capable Chromium and fonts
# that cover Chinese text. Idempotent: returns at once when both are there. Needs root and apt.
# (Playwright's own browser download cannot be used here; the tests launch /usr/bin/chromium.)
set -eu

have_fonts() {
    command -v fc-list >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q .
}
[ -x /usr/bin/chromium ] && have_fonts && exit 0

echo "ensure-chromium: installing chromium and CJK fonts" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-chromium: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts="-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3"
apt-get $apt_opts update -q
apt-get $apt_opts install -y -q --no-install-recommends chromium fonts-noto-cjk fontconfig

if [ ! -x /usr/bin/chromium ]; then
    echo "ensure-chromium: /usr/bin/chromium still missing after install" >&2
    exit 1
fi
