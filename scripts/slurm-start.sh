#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine (as root; Debian's slurmctld, slurmd, munge).
# Idempotent: returns at once when `sinfo` already answers. Used by .ci/run before the tests.
set -euo pipefail
if sinfo >/dev/null 2>&1; then exit 0; fi
for b in slurmctld slurmd munged sbatch; do
  command -v "$b" >/dev/null || { echo "slurm-start: $b not installed" >&2; exit 1; }
done
host=$(hostname -s)
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
# Never replace a site's own configuration: only a missing file or one this script wrote.
conf=/etc/slurm/slurm.conf
if [ -s "$conf" ] && ! grep -q '^ClusterName=exitbench$' "$conf"; then
  echo "slurm-start: $conf exists and is not exitbench's one-node test cluster; not touching it" >&2
  exit 1
fi
mkdir -p /etc/slurm
cat > "$conf" <<CONF
ClusterName=exitbench
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then exit 0; fi
  sleep 1
done
echo "slurm-start: the node did not come up; see /var/log/slurm/" >&2
exit 1
