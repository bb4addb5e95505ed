#!/usr/bin/env bash
# Stop the throwaway cluster that scripts/slurm/start.sh STATE_DIR started.
#
#   scripts/slurm/stop.sh STATE_DIR
#
# Cancels the jobs of THIS cluster only (through STATE_DIR/slurm.conf), then
# stops its slurmd, slurmctld and munged. Processes are found by their command
# line naming STATE_DIR (pid files are only a hint), so stale pid files are
# harmless and nothing belonging to another cluster is touched. Leftover job
# step daemons (slurmstepd started by this cluster's slurmd) and their children
# are killed last. Files in STATE_DIR (logs included) are left for inspection;
# nothing outside it is removed. Safe to run when nothing is running.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
PATH="$PATH:/usr/sbin:/sbin"
if [ ! -d "$1" ]; then
    exit 0
fi
STATE="$(cd "$1" && pwd -P)"
CONF="$STATE/slurm.conf"
MUNGE_SOCKET="$STATE/munge/munge.socket"

# pids of daemons whose argv names this STATE_DIR: find_daemons NAME ARG
find_daemons() {
    local name="$1" want="$2" d pid comm
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        comm="$(cat "$d/comm" 2>/dev/null)" || continue
        [ "$comm" = "$name" ] || continue
        if tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qxF -- "$want"; then
            echo "$pid"
        fi
    done
}

# pids of slurmstepd processes started by this cluster's slurmd
find_stepds() {
    local d pid comm
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        comm="$(cat "$d/comm" 2>/dev/null)" || continue
        case "$comm" in slurmstepd*) ;; *) continue ;; esac
        if tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qxF -- "SLURM_CONF=$CONF"; then
            echo "$pid"
        fi
    done
}

# all descendants of the given pids (children first listed after parents)
descendants() {
    local todo="$*" out="" p c
    while [ -n "$todo" ]; do
        set -- $todo
        todo=""
        for p in "$@"; do
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces
            for c in $(sed -nE "s/^([0-9]+) \(.*\) [A-Za-z] $p .*/\1/p" /proc/[0-9]*/stat 2>/dev/null); do
                out="$out $c"
                todo="$todo $c"
            done
        done
    done
    echo $out
}

# running and not a zombie (some container inits never reap daemonized processes)
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local st
    st="$(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$st" ] && [ "$st" != "Z" ] && [ "$st" != "X" ]
}

# kill_wait SECONDS PID...: SIGTERM, wait, then SIGKILL
kill_wait() {
    local secs="$1"; shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null
    local i p left
    for i in $(seq $((secs * 10))); do
        left=""
        for p in "$@"; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    for p in "$@"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    sleep 0.2
    return 0
}

ctld_pids="$(find_daemons slurmctld "$CONF")"
slurmd_pids="$(find_daemons slurmd "$CONF")"
munged_pids="$(find_daemons munged "--socket=$MUNGE_SOCKET")"

# 1. cancel this cluster's jobs while the controller still answers
if [ -n "$ctld_pids" ] && [ -f "$CONF" ] && command -v squeue >/dev/null 2>&1; then
    export SLURM_CONF="$CONF"
    jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u)"
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null
        for _ in $(seq 100); do
            [ -z "$(timeout 10 squeue -h -o '%A' 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

# 2. daemons, all at once (each takes 1-2 s to exit on SIGTERM)
# shellcheck disable=SC2086
kill_wait 10 $slurmd_pids $ctld_pids $munged_pids

# 3. anything a killed slurmd left behind (job steps and their processes)
stepds="$(find_stepds)"
if [ -n "$stepds" ]; then
    # shellcheck disable=SC2086
    kids="$(descendants $stepds)"
    # shellcheck disable=SC2086
    kill -KILL $stepds $kids 2>/dev/null
fi

rm -f "$STATE/run/slurmctld.pid" "$STATE/run/slurmd.pid" "$STATE/run/munged.pid" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
exit 0
