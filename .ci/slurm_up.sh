#!/usr/bin/env bash
# A real Slurm on this one machine, from Debian's packages, for trying the Slurm profile and for
# the test that runs the pipeline through it (tests/test_slurm.py):
#
#   apt-get install slurm-wlm slurmdbd mariadb-server munge   # once
#   .ci/slurm_up.sh [STATE_DIR]     # start munged, MariaDB, slurmdbd, slurmctld, slurmd
#   .ci/slurm_down.sh [STATE_DIR]   # stop them again, by the pids this script recorded
#
# Needs root (no systemd: the daemons are started here, and the cluster's configuration goes
# where every Slurm command and every job step looks for it, /etc/slurm/). An /etc/slurm that
# this script did not write is left alone and the script stops.
#
# The cluster: ClusterName audioopd; two partitions, `main` (the default) and `ci` (the one a
# site profile names); account `audioopd` (root may use it, and accounting enforces that a job
# names a valid one); `sacct` through slurmdbd on MariaDB. SLURM_UP_NODES=2 (the default) runs
# two slurmd on this machine as nodes n1 and n2 when the Slurm build allows it, so a two-node
# job really spans two nodes; otherwise (or with SLURM_UP_NODES=1) one node named n1.
# Each node offers every core and 80 % of the memory of this machine.
set -euo pipefail

STATE=${1:-${TMPDIR:-/tmp}/audio-opd-slurm}
WANT_NODES=${SLURM_UP_NODES:-2}
MARK="# written by audio-opd .ci/slurm_up.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf

die() { echo "slurm_up: $*" >&2; exit 1; }

for tool in munged mariadbd mariadb slurmdbd slurmctld slurmd sacctmgr sinfo sbatch sacct; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    die "$tool not found; install Debian's slurm-wlm slurmdbd mariadb-server munge first"
done
[ "$(id -u)" = 0 ] || die "needs root (it writes /etc/slurm and starts the daemons)"
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; not touching a real cluster's config"
fi
if [ -s "$STATE/pids" ]; then
  die "$STATE/pids exists: a cluster from this script may be running (.ci/slurm_down.sh $STATE)"
fi

export PATH="/usr/sbin:$PATH"
mkdir -p "$STATE"/{log,spool,ctld}
: >"$STATE/pids"
record() { echo "$1 $2" >>"$STATE/pids"; }   # name pid

# Waits up to $2 seconds for command $1 to succeed.
wait_for() {
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

# --- munge: authentication between the Slurm daemons and commands
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
runuser -u munge -- munged --pid-file=/run/munge/munged.pid
wait_for "test -s /run/munge/munged.pid" 10 || die "munged did not start"
record munged "$(cat /run/munge/munged.pid)"

# --- MariaDB: the accounting database behind slurmdbd (what `sacct` reads); a fresh one each
# time, since job ids start again at 1 with a fresh slurmctld.
# Its socket stays in Debian's /run/mysqld: the mysql user may not enter a private STATE.
SOCKET=/run/mysqld/mysqld.sock
install -d -o mysql -g mysql /run/mysqld
mariadbd --user=mysql --datadir=/var/lib/mysql --socket=$SOCKET \
  --pid-file=/run/mysqld/audio-opd.pid --skip-networking=0 --bind-address=127.0.0.1 \
  --port=3306 >"$STATE/log/mariadb.log" 2>&1 &
record mariadbd $!
wait_for "mariadb --socket=$SOCKET -e 'select 1'" 60 ||
  die "MariaDB did not start ($STATE/log/mariadb.log)"
mariadb --socket=$SOCKET <<'SQL'
DROP DATABASE IF EXISTS audio_opd_slurm_acct;
CREATE DATABASE audio_opd_slurm_acct;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON audio_opd_slurm_acct.* TO 'slurm'@'localhost';
GRANT ALL ON audio_opd_slurm_acct.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# --- the cluster's configuration
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(($(awk '/^MemTotal/ {print $2}' /proc/meminfo) * 8 / 10 / 1024))
mkdir -p /etc/slurm
cat >"$DBD_CONF" <<EOF
$MARK
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=audio_opd_slurm_acct
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
chmod 0600 "$DBD_CONF"

write_conf() {  # $1: number of nodes
  {
    echo "$MARK"
    cat <<EOF
ClusterName=audioopd
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStoreFlags=job_comment
# Retries come from Snakemake (a new job), never from Slurm requeueing the old one.
JobRequeue=0
MinJobAge=600
KillWait=10
EOF
    if [ "$1" = 1 ]; then
      echo "NodeName=n1 NodeHostname=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
      NODELIST=n1
    else
      echo "NodeName=n1 NodeHostname=$HOST Port=17001 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
      echo "NodeName=n2 NodeHostname=$HOST Port=17002 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
      NODELIST=n[1-2]
    fi
    echo "PartitionName=main Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=ci Nodes=$NODELIST Default=NO MaxTime=INFINITE State=UP"
  } >"$CONF"
}

# --- slurmdbd, the account, slurmctld
slurmdbd
wait_for "test -s $STATE/slurmdbd.pid" 30 || die "slurmdbd did not start ($STATE/log/slurmdbd.log)"
record slurmdbd "$(cat "$STATE/slurmdbd.pid")"
write_conf 1
wait_for "sacctmgr -n list cluster" 30 || die "slurmdbd does not answer ($STATE/log/slurmdbd.log)"
sacctmgr -i add cluster audioopd >/dev/null 2>&1 || true
sacctmgr -i add account audioopd Cluster=audioopd Description=audio-opd Organization=audio-opd \
  >/dev/null 2>&1 || true
sacctmgr -i add user root Account=audioopd DefaultAccount=audioopd >/dev/null 2>&1 || true

# Two slurmd on one machine need a Slurm built with --enable-multiple-slurmd; try, else one.
start_slurmd() {  # node names
  local node
  for node in "$@"; do
    slurmd -N "$node"
    wait_for "test -s $STATE/slurmd.$node.pid" 15 || return 1
    record "slurmd.$node" "$(cat "$STATE/slurmd.$node.pid")"
  done
}
stop_slurmd() {
  local name pid
  while read -r name pid; do
    case $name in slurmd.*) kill "$pid" 2>/dev/null || true ;; esac
  done <"$STATE/pids"
  sleep 1
  grep -v '^slurmd\.' "$STATE/pids" >"$STATE/pids.tmp" || true
  mv "$STATE/pids.tmp" "$STATE/pids"
  rm -f "$STATE"/slurmd.*.pid
}

nodes_idle() {  # every configured node is idle
  [ "$(sinfo -h -p main -t idle -o '%D')" = "$1" ]
}

NODES=1
if [ "$WANT_NODES" = 2 ]; then
  write_conf 2
  slurmctld
  wait_for "test -s $STATE/slurmctld.pid" 15 || die "slurmctld did not start"
  record slurmctld "$(cat "$STATE/slurmctld.pid")"
  if start_slurmd n1 n2 && wait_for "nodes_idle 2" 30; then
    NODES=2
  else
    echo "slurm_up: two slurmd on one machine did not come up; using one node" >&2
    stop_slurmd
    kill "$(cat "$STATE/slurmctld.pid")" && sleep 2
    grep -v '^slurmctld ' "$STATE/pids" >"$STATE/pids.tmp" || true
    mv "$STATE/pids.tmp" "$STATE/pids"
    rm -rf "$STATE/ctld"/* "$STATE/slurmctld.pid"
  fi
fi
if [ "$NODES" = 1 ]; then
  write_conf 1
  slurmctld
  wait_for "test -s $STATE/slurmctld.pid" 15 || die "slurmctld did not start"
  record slurmctld "$(cat "$STATE/slurmctld.pid")"
  start_slurmd n1 || die "slurmd did not start ($STATE/log/slurmd.n1.log)"
  wait_for "nodes_idle 1" 30 || die "node n1 is not idle: $(sinfo -N -l)"
fi
echo "$NODES" >"$STATE/nodes"
sinfo -N -o "%N %P %T %c %m"
echo "slurm_up: $NODES node(s) up; state in $STATE; stop with .ci/slurm_down.sh $STATE"
