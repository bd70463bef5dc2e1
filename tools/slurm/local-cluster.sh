#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for CI and for trying `mscope slurm plan --submit`
# without a real cluster: installs Debian's slurm-wlm and munge when missing, writes a slurm.conf
# naming this host (all its CPUs, no cgroups, requeue allowed), starts munged, slurmctld and
# slurmd, and waits until `sinfo` shows the node idle. Needs root. Safe to run again: a cluster
# that already answers with an idle node and the same configuration is left as it is; a changed
# configuration is applied with `scontrol reconfigure`.
#
# Environment: MSCOPE_SLURM_CONF (default /etc/slurm/slurm.conf), MSCOPE_SLURM_STATE (state and
# spool directories, default /var/spool/mscope-slurm), MSCOPE_SLURM_LOGS (default
# /var/log/mscope-slurm).
set -euo pipefail

conf=${MSCOPE_SLURM_CONF:-/etc/slurm/slurm.conf}
state=${MSCOPE_SLURM_STATE:-/var/spool/mscope-slurm}
logs=${MSCOPE_SLURM_LOGS:-/var/log/mscope-slurm}
node=$(hostname -s)

idle() {
    [ "$(sinfo --noheader --nodes="$node" --format=%t 2>/dev/null | head -n1)" = idle ]
}

if [ "$(id -u)" -ne 0 ]; then
    echo "local-cluster.sh: needs root (it installs packages and starts the Slurm daemons)" >&2
    exit 1
fi

if ! dpkg -s slurm-wlm munge >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
fi

# munge: the postinst makes a key on most installs; make one where it did not.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

mkdir -p "$(dirname "$conf")" "$state/ctld" "$state/d" "$logs"
cpus=$(nproc)
# RealMemory in MiB, a little under what the machine has, so the node is not drained as short
# of memory; jobs are scheduled by CPU only (CR_CPU), so it is informational.
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat >"$conf.new" <<CONF
# Written by mscope's tools/slurm/local-cluster.sh: a one-node cluster on $node.
ClusterName=mscope
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
# No cgroups in containers and small VMs: processes tracked by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
# No mail on this machine.
MailProg=/bin/true
ReturnToService=2
# Requeue: jobs may be requeued (by scontrol requeue or preemption) unless they say --no-requeue.
JobRequeue=1
# No accounting daemon: sacct has nothing; job state is read with scontrol / squeue.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to scontrol for 5 minutes.
MinJobAge=300
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

if cmp -s "$conf.new" "$conf"; then
    rm "$conf.new"
    changed=0
    if idle; then
        exit 0
    fi
else
    mv "$conf.new" "$conf"
    changed=1
fi

running() { pgrep -x "$1" >/dev/null; }
if [ "$changed" = 1 ] && running slurmctld; then
    scontrol reconfigure || true
fi
running slurmctld || /usr/sbin/slurmctld -f "$conf"
running slurmd || /usr/sbin/slurmd -f "$conf"

for _ in $(seq 100); do
    if idle; then
        exit 0
    fi
    # A node that was down (an earlier daemon died) comes back once told to.
    if sinfo --noheader --nodes="$node" --format=%t 2>/dev/null | grep -qE '^(down|drain)'; then
        scontrol update nodename="$node" state=resume 2>/dev/null || true
    fi
    sleep 0.3
done
echo "local-cluster.sh: the node $node is not idle after 30 s:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$logs/slurmctld.log" "$logs/slurmd.log" >&2 || true
exit 1
