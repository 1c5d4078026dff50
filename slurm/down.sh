#!/usr/bin/env bash
# Stop the clinsynth test Slurm cluster started by slurm/up.sh: cancel all jobs, then stop
# the slurmds, slurmctld, slurmdbd, MariaDB and munged through their pid files.
# Idempotent: never fails when nothing (or only part of it) runs.
set -uo pipefail

say() { echo "slurm/down.sh: $*"; }

is_running() { # pidfile comm-regex
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" =~ ^($2)$ ]]
}
# stop the daemons named by "pidfile:comm-regex" arguments together: TERM all, wait up
# to 15 s, KILL what is left; drop stale pid files
stop_pidfiles() {
  local spec pf re pid pids=() names=() i
  for spec in "$@"; do
    pf=${spec%%:*}; re=${spec#*:}
    if is_running "$pf" "$re"; then
      pid=$(cat "$pf")
      pids+=("$pid"); names+=("$(cat /proc/"$pid"/comm 2>/dev/null || echo "$re")")
      kill -TERM "$pid" 2>/dev/null
    fi
  done
  for _ in $(seq 150); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} (${pids[$i]}) did not stop in 15 s, sending KILL" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null
    fi
    say "stopped ${names[$i]} (${pids[$i]})"
  done
  for spec in "$@"; do
    pf=${spec%%:*}; re=${spec#*:}
    [ -e "$pf" ] && ! is_running "$pf" "$re" && rm -f "$pf"
  done
  return 0
}

# 1. cancel every job so that the slurmstepd processes end before their slurmd goes
if command -v squeue >/dev/null && is_running /run/slurmctld.pid slurmctld; then
  users=$(squeue -h -o %u 2>/dev/null | sort -u)
  if [ -n "$users" ]; then
    for u in $users; do scancel --quiet -u "$u" 2>/dev/null; done
    for _ in $(seq 150); do
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.1
    done
    left=$(squeue -h -o %A 2>/dev/null | wc -l)
    [ "$left" -gt 0 ] && say "$left job(s) still listed after scancel (going on)" >&2
    say "cancelled jobs of: $(echo "$users" | paste -sd" " -)"
  fi
fi

# 2. daemons, compute side first; slurmdbd after slurmctld so the last records reach it
slurmds=()
for pf in /run/slurmd-*.pid /run/slurmd.pid; do [ -e "$pf" ] && slurmds+=("$pf:slurmd"); done
[ "${#slurmds[@]}" -gt 0 ] && stop_pidfiles "${slurmds[@]}"
stop_pidfiles /run/slurmctld.pid:slurmctld
stop_pidfiles /run/slurmdbd.pid:slurmdbd
stop_pidfiles '/run/mysqld/mysqld.pid:mariadbd|mysqld' /run/munge/munged.pid:munged
say "down"
exit 0
