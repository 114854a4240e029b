#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start_slurm.sh: slurmd, slurmctld,
# and munged when that script started it; remove its links in /etc/slurm.
# Running jobs are killed with the daemons. $PHYSPACK_SLURM_DIR (default
# /tmp/physpack-slurm) keeps the logs; remove it by hand for a clean start.
set -euo pipefail

dir=${PHYSPACK_SLURM_DIR:-/tmp/physpack-slurm}
etc=/etc/slurm

stop_pidfile() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}

stop_pidfile "$dir/slurmd.pid"
stop_pidfile "$dir/slurmctld.pid"
if [[ -f $dir/munged.started ]]; then
    munged --stop >/dev/null 2>&1 || true
    rm -f "$dir/munged.started"
fi
for name in slurm.conf cgroup.conf; do
    if [[ -L $etc/$name && $(readlink "$etc/$name") == "$dir/"* ]]; then
        rm -f "$etc/$name"
    fi
done
echo "SLURM stopped"
