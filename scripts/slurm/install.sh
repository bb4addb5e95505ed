#!/usr/bin/env bash
# Install SLURM (slurmctld + slurmd + client tools) and munge with apt when missing.
# Idempotent: exits at once when the daemons are already on PATH.
# Needs root (or passwordless sudo) the first time; Debian/Ubuntu only.
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"
missing() {
    local b
    for b in slurmctld slurmd munged sbatch sinfo; do
        command -v "$b" >/dev/null 2>&1 || return 0
    done
    return 1
}
missing || exit 0

# Serialize concurrent installs (pytest-xdist workers, parallel CI steps).
if command -v flock >/dev/null 2>&1 && [ -z "${SLURM_INSTALL_LOCKED:-}" ]; then
    export SLURM_INSTALL_LOCKED=1
    exec flock -w 900 "${TMPDIR:-/tmp}/mixer-scaling-slurm-install.lock" bash "$0" "$@"
fi
missing || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: slurmctld/munged missing and apt-get is not available; install slurm-wlm and munge by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install.sh: slurm-wlm/munge missing and not root (no passwordless sudo) to install them" >&2
        exit 1
    fi
fi

log=$(mktemp -t slurm-install.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
echo "install.sh: installing slurm-wlm and munge with apt (log: $log)" >&2
# Do not start services through invoke-rc.d/systemd: start.sh runs its own daemons.
policy_created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_created=1
fi
cleanup() { if [ "$policy_created" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

apt_opts=(-q -o DPkg::Lock::Timeout=300)
if ! { $SUDO apt-get "${apt_opts[@]}" update && \
       $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends slurm-wlm munge; } >"$log" 2>&1; then
    echo "install.sh: apt-get failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
fi

for b in slurmctld slurmd munged sbatch sinfo; do
    if ! command -v "$b" >/dev/null 2>&1; then
        echo "install.sh: $b still missing after apt-get install (see $log)" >&2
        exit 1
    fi
done
rm -f "$log"
echo "install.sh: installed $(slurmctld -V 2>/dev/null || echo slurm)" >&2
