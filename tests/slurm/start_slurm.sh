#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost for the test suite (idempotent).
#
#   tests/slurm/start_slurm.sh      # configures and starts munged, slurmctld, slurmd
#                                   # and waits until the node takes jobs
#
# Needs root and the Debian packages slurm-wlm and munge. The cluster's state, logs
# and pid files stay in $PHYSPACK_SLURM_DIR (default /tmp/physpack-slurm); its
# slurm.conf and cgroup.conf are written there too and linked from /etc/slurm, the
# place every SLURM command looks. (SLURM_CONF would not do: the executor plugin's
# job step removes SLURM_* variables before it calls srun inside the job.) An
# /etc/slurm/slurm.conf that this script did not write is never replaced (exit 3).
#
# The cluster: one node "localhost" with this machine's CPUs and memory, partitions
# "cpu" (default) and "gpu" as named in profiles/slurm, no cgroups (containers often
# lack them), no accounting database (the executor plugin is told to poll squeue),
# and a long MinJobAge so that squeue still reports finished jobs to the plugin.
# There is no GPU: jobs that ask for one are submitted with gpu=0 by the tests.
set -euo pipefail

dir=${PHYSPACK_SLURM_DIR:-/tmp/physpack-slurm}
conf=$dir/slurm.conf
etc=/etc/slurm

node_ready() {
    # "idle", "mix" or "alloc" with no suffix ("*": not responding, "~": powered
    # off, "#": powering up): slurmd has registered and the node takes jobs.
    local state
    state=$(sinfo --noheader --nodes=localhost --format=%t 2>/dev/null | head -n1)
    [[ $state =~ ^(idle|mix|alloc)$ ]]
}

if [[ $etc/slurm.conf -ef $conf ]] && scontrol ping >/dev/null 2>&1 && node_ready; then
    echo "SLURM already running ($etc/slurm.conf -> $conf)"
    exit 0
fi

for cmd in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$cmd" >/dev/null || { echo "missing command: $cmd" >&2; exit 1; }
done
if [[ $(id -u) != 0 ]]; then
    echo "starting slurmctld/slurmd needs root" >&2
    exit 1
fi
for name in slurm.conf cgroup.conf; do
    if [[ -e $etc/$name && $(readlink "$etc/$name") != "$dir/$name" ]]; then
        echo "$etc/$name exists and was not written by $0; not replacing it" >&2
        exit 3  # tests/test_slurm.py skips on this status
    fi
done

mkdir -p "$dir"/{ctld,spool,log} "$etc"

# munge: one key shared by all daemons on this host; create it if the package
# did not (the Debian package does on install).
key=/etc/munge/munge.key
if [[ ! -s $key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
fi
chown munge:munge "$key" 2>/dev/null || true
chmod 0400 "$key"
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    touch "$dir/munged.started"  # stop_slurm.sh stops only a munged started here
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
munge -n </dev/null | unmunge >/dev/null

# The node's hardware as slurmd itself sees it (CPUs, sockets, cores, memory).
hardware=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
controller=$(hostname -s)

cat >"$conf" <<EOF
# Written by tests/slurm/start_slurm.sh: single-node test cluster.
ClusterName=physpack-test
SlurmctldHost=$controller(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups: track job processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue (the executor plugin's status command) for
# ten minutes; SIGTERM comes KillWait seconds before SIGKILL on scancel/preemption.
MinJobAge=600
KillWait=20
SlurmdTimeout=60
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF

cat >"$dir/cgroup.conf" <<EOF
# Written by tests/slurm/start_slurm.sh. Nothing is constrained through cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none).
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

ln -sfn "$conf" "$etc/slurm.conf"
ln -sfn "$dir/cgroup.conf" "$etc/cgroup.conf"

# Daemons left over from an earlier start with another configuration.
for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")"
        for _ in $(seq 50); do
            kill -0 "$(cat "$pidfile")" 2>/dev/null || break
            sleep 0.2
        done
    fi
done

# -c: start from a clean state (no jobs or node states of an earlier run).
slurmctld -c
for _ in $(seq 100); do
    scontrol ping >/dev/null 2>&1 && break
    sleep 0.2
done
scontrol ping >/dev/null || {
    echo "slurmctld did not start; log:" >&2
    tail -n 30 "$dir/log/slurmctld.log" >&2
    exit 1
}

slurmd -N localhost
for _ in $(seq 150); do
    node_ready && break
    # A node left DOWN by an earlier run comes back once slurmd has registered.
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 0.2
done
node_ready || {
    echo "node localhost did not become idle:" >&2
    sinfo --nodes=localhost --long >&2 || true
    tail -n 30 "$dir/log/slurmd.log" >&2
    exit 1
}
echo "SLURM running ($etc/slurm.conf -> $conf)"
