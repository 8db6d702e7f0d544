#!/usr/bin/env bash
# Stops the daemons .ci/slurm_up.sh started (by the pids it recorded, newest first) and removes
# the configuration it wrote in /etc/slurm. The state folder (logs included) stays.
set -uo pipefail
STATE=${1:-${TMPDIR:-/tmp}/audio-opd-slurm}
MARK="# written by audio-opd .ci/slurm_up.sh"
[ -s "$STATE/pids" ] || { echo "slurm_down: nothing recorded in $STATE/pids"; exit 0; }

# Jobs still running would outlive their slurmd otherwise.
command -v scancel >/dev/null && scancel --full --user "$(id -un)" 2>/dev/null
tac "$STATE/pids" | while read -r name pid; do
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null; fi
  echo "slurm_down: stopped $name ($pid)"
done
: >"$STATE/pids"
for conf in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
  if [ -e "$conf" ] && grep -qF "$MARK" "$conf"; then rm -f "$conf"; fi
done
