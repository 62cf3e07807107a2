#!/bin/sh
# Install what the real-Slurm integration test needs (Debian: slurm-wlm, slurmdbd, slurmrestd,
# munge).
# Idempotent: returns at once when the binaries are already there. Needs root and apt.
# MariaDB is expected to be running already (it is on the service and CI machines).
set -eu
PATH="$PATH:/usr/sbin:/sbin"

need="slurmctld slurmd slurmdbd slurmrestd sacct sacctmgr sbatch scontrol munged munge unmunge"
missing=""
for bin in $need; do
    command -v "$bin" >/dev/null 2>&1 || missing="$missing $bin"
done
[ -z "$missing" ] && exit 0

echo "ensure-slurm: missing:$missing; installing slurm-wlm slurmdbd slurmrestd munge" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-slurm: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run rather than failing on its lock.
apt_opts="-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3"
apt-get $apt_opts update -q
apt-get $apt_opts install -y -q --no-install-recommends slurm-wlm slurmdbd slurmrestd munge

for bin in $need; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "ensure-slurm: $bin still missing after install" >&2
        exit 1
    fi
done
