#!/usr/bin/env bash
# Bring up the clinsynth test Slurm cluster on this one machine.
#
# A real Slurm (Debian 12 packages, 22.05) with N emulated compute nodes on localhost:
# munged + MariaDB + slurmdbd (accounting, so `sacct` works: submitit polls it) +
# slurmctld + one `slurmd -N nodeK` per node. No systemd and no cgroups are needed
# (proctrack/linuxproc, task/none). Run as root. Idempotent: when the cluster is already
# up it only checks and exits (~1 s); when daemons are half up it starts what is missing;
# when the generated slurm.conf changes it restarts slurmctld and the slurmds.
#
# Environment:
#   CLINSYNTH_SLURM_NODES=2        number of emulated nodes (node1..nodeN)
#   CLINSYNTH_SLURM_CPUS=8         CPUs declared per node (may exceed the hardware)
#   CLINSYNTH_SLURM_MEM_MB=...     RealMemory per node (default: (RAM - 2 GiB) / N, max 16000)
#   CLINSYNTH_SLURM_ACCOUNTING=1   0: no slurmdbd/MariaDB (sacct then fails)
#   CLINSYNTH_SLURM_WAIT=90        seconds to wait for the nodes to become idle
set -euo pipefail

t0=$EPOCHREALTIME
say() { echo "slurm/up.sh: $*"; }
die() { echo "slurm/up.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

NNODES="${CLINSYNTH_SLURM_NODES:-2}"
CPUS="${CLINSYNTH_SLURM_CPUS:-8}"
ACCT="${CLINSYNTH_SLURM_ACCOUNTING:-1}"
WAIT_S="${CLINSYNTH_SLURM_WAIT:-90}"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "CLINSYNTH_SLURM_NODES must be a positive integer"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "CLINSYNTH_SLURM_CPUS must be a positive integer"
if [ -n "${CLINSYNTH_SLURM_MEM_MB:-}" ]; then
  MEM_MB=$CLINSYNTH_SLURM_MEM_MB
else
  total_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
  MEM_MB=$(( (total_mb - 2048) / NNODES ))
  [ "$MEM_MB" -gt 16000 ] && MEM_MB=16000
  [ "$MEM_MB" -lt 1000 ] && MEM_MB=1000
fi

CLUSTER=clinsynth
HOST=$(hostname -s)
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
NODES=$(seq -f 'node%g' 1 "$NNODES" | tr '\n' ' ' | sed 's/ $//')
if [ "$NNODES" = 1 ]; then NODE_EXPR=node1; PORT_EXPR=17001
else NODE_EXPR="node[1-$NNODES]"; PORT_EXPR="[17001-$((17000 + NNODES))]"; fi

# pid file alive and really the named program (a stale pid may have been reused)
is_running() { # pidfile comm
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [ -z "${2:-}" ] || [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}
# stop daemons given as "pidfile:comm" together (TERM all, wait up to 15 s, then KILL)
stop_pidfiles() {
  local spec pid pids=()
  for spec in "$@"; do
    if is_running "${spec%%:*}" "${spec#*:}"; then
      pid=$(cat "${spec%%:*}"); pids+=("$pid"); kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for _ in $(seq 150); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for spec in "$@"; do rm -f "${spec%%:*}"; done
}
log_tails() {
  local f
  for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd-*.log "$LOG_DIR"/slurmdbd.log /var/log/mysql/error.log; do
    [ -s "$f" ] && { echo "---- tail $f" >&2; tail -n 20 "$f" >&2; }
  done
  return 0
}

# ---------------------------------------------------------------- 1. packages
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
MISSING=""
for p in $PKGS; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  say "installing$MISSING"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d: do not let the maintainer scripts try to start services (no systemd here)
  OWN_POLICY=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; OWN_POLICY=1
  fi
  rc=0
  # shellcheck disable=SC2086  # word splitting wanted: a package list
  apt-get install -y -qq --no-install-recommends $MISSING >/dev/null || rc=$?
  [ "$OWN_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install failed ($rc)"
fi

# ---------------------------------------------------------------- 2. /etc/hosts
# node names must resolve: torch.distributed takes MASTER_ADDR from SLURM_JOB_NODELIST
for n in $NODES; do
  grep -qE "^127\.0\.0\.1[[:space:]]+(.*[[:space:]])?$n([[:space:]]|\$)" /etc/hosts || echo "127.0.0.1 $n" >> /etc/hosts
done

# ---------------------------------------------------------------- 3. munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key --force
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  stop_pidfiles /run/munge/munged.pid:munged
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 || die "munged failed to start"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
fi

install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$STATE_DIR"

# ---------------------------------------------------------------- 4. accounting: MariaDB + slurmdbd
if [ "$ACCT" = 1 ]; then
  if ! mysqladmin ping >/dev/null 2>&1; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
    [ -x "$MARIADBD" ] || MARIADBD=/usr/sbin/mysqld
    setsid "$MARIADBD" --user=mysql --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
    for _ in $(seq 300); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.1; done
    mysqladmin ping >/dev/null 2>&1 || { log_tails; die "MariaDB did not start"; }
  fi
  # the database password lives only in slurmdbd.conf (0600); made once, reused after
  DB_PW=$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf" 2>/dev/null || true)
  [ -n "$DB_PW" ] || DB_PW=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PW';
            ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PW';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  NEWDBD=$(mktemp)
  cat > "$NEWDBD" <<EOF
# generated by clinsynth slurm/up.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PW
StorageLoc=slurm_acct_db
EOF
  DBD_CHANGED=0
  if ! cmp -s "$NEWDBD" "$CONF_DIR/slurmdbd.conf"; then
    install -m 0600 "$NEWDBD" "$CONF_DIR/slurmdbd.conf"; DBD_CHANGED=1
  fi
  rm -f "$NEWDBD"
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

# ---------------------------------------------------------------- 5. slurm.conf
NEWCONF=$(mktemp)
cat > "$NEWCONF" <<EOF
# generated by clinsynth slurm/up.sh -- a one-machine test cluster; edits are overwritten
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it may start again (default 120 s): short for tests
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
# no cgroups: /proc based process tracking, no task containment or binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_LINES
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# trust CPUs/RealMemory below even where they exceed the hardware
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$STATE_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmctldPort=6817
# %n: one pid file, spool dir and log per emulated node (else the second slurmd replaces the first)
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=$SPOOL_DIR-%n
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# quick turnaround for tests
SchedulerParameters=sched_interval=2,sched_min_interval=100000,bf_interval=2
MessageTimeout=10
KillWait=5
InactiveLimit=0
Waittime=0
# finished jobs stay in slurmctld (scontrol show job) for an hour; sacct keeps them for good
MinJobAge=3600
MaxArraySize=10001
NodeName=$NODE_EXPR NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$PORT_EXPR CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
CONF_CHANGED=0
if ! cmp -s "$NEWCONF" "$CONF_DIR/slurm.conf"; then
  install -m 0644 "$NEWCONF" "$CONF_DIR/slurm.conf"; CONF_CHANGED=1
fi
rm -f "$NEWCONF"

# ---------------------------------------------------------------- 6. slurmdbd + cluster registration
RESTART_CTLD=$CONF_CHANGED
if [ "$ACCT" = 1 ]; then
  [ "$DBD_CHANGED" = 1 ] && stop_pidfiles /run/slurmdbd.pid:slurmdbd
  if ! is_running /run/slurmdbd.pid slurmdbd; then
    rm -f /run/slurmdbd.pid
    /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1 || { log_tails; die "slurmdbd failed to start"; }
  fi
  for _ in $(seq 150); do sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 && break; sleep 0.1; done
  sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 || { log_tails; die "slurmdbd does not answer"; }
  # the cluster must exist in the database before slurmctld registers with slurmdbd
  if [ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster 2>/dev/null)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    RESTART_CTLD=1
  fi
fi

# ---------------------------------------------------------------- 7. slurmctld + slurmds
CLEAR=""
if [ "$RESTART_CTLD" = 1 ] && { is_running /run/slurmctld.pid slurmctld || ls /run/slurmd-*.pid >/dev/null 2>&1; }; then
  say "configuration changed: restarting slurmctld and slurmd"
  specs=(/run/slurmctld.pid:slurmctld)
  for pf in /run/slurmd-*.pid; do [ -e "$pf" ] && specs+=("$pf:slurmd"); done
  stop_pidfiles "${specs[@]}"
fi
# the node set may have changed: drop saved state then (else keep it, so job ids keep
# counting up and do not collide with old records in the accounting database)
[ "$CONF_CHANGED" = 1 ] && CLEAR="-c"
if [ -s "$STATE_DIR/clustername" ] && [ "$(cat "$STATE_DIR/clustername")" != "$CLUSTER" ]; then
  rm -f "$STATE_DIR/clustername"; CLEAR="-c"
fi
if ! is_running /run/slurmctld.pid slurmctld; then
  rm -f /run/slurmctld.pid
  /usr/sbin/slurmctld -i $CLEAR </dev/null >/dev/null 2>&1 || { log_tails; die "slurmctld failed to start"; }
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
fi
for n in $NODES; do
  if ! is_running "/run/slurmd-$n.pid" slurmd; then
    rm -f "/run/slurmd-$n.pid"
    install -d -m 0755 "$SPOOL_DIR-$n"
    /usr/sbin/slurmd -N "$n" </dev/null >/dev/null 2>&1 || { log_tails; die "slurmd -N $n failed to start"; }
  fi
done

# ---------------------------------------------------------------- 8. wait for idle nodes
ready() { # every node in a usable state
  local states
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  echo "$states" | awk -v n="$NNODES" '
    NF { seen[$1] = 1; if ($2 !~ /^(idle|mixed|allocated|completing|planned)$/) bad = 1 }
    END { c = 0; for (k in seen) c++; exit (bad || c != n) }'
}
deadline=$(( SECONDS + WAIT_S )); tries=0
until ready; do
  [ "$SECONDS" -ge "$deadline" ] && break
  tries=$((tries + 1))
  # resume nodes left down/drained by an earlier run (not while they are still registering)
  if [ "$tries" -ge 10 ] && [ $((tries % 10)) = 0 ]; then
    bad=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /down|drain|fail/ {print $1}' | sort -u | paste -sd, -)
    [ -n "$bad" ] && scontrol update NodeName="$bad" State=RESUME 2>/dev/null || true
  fi
  sleep 0.2
done
sinfo -N
dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
if ready; then
  say "cluster '$CLUSTER' ready in ${dt}s ($NNODES nodes x $CPUS CPUs, accounting=$ACCT)"
else
  log_tails
  die "nodes not ready after ${dt}s"
fi
