#!/usr/bin/env bash
# Run `python -m olmo_jax.main` as NUM_PROCESSES CPU processes on this machine, each with
# DEVICES_PER_PROCESS fake devices, joined through jax.distributed with gloo collectives: a multi-host run
# in miniature, for testing multi-process code without a cluster.
#
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES [olmo_jax.main args...]
#   launch/local_multiprocess.sh 2 --config=tiny --workdir=runs/tiny2
#   DRY_RUN=1 launch/local_multiprocess.sh 2 --config=tiny     # print the commands, run nothing
#
# Environment:
#   DEVICES_PER_PROCESS  fake CPU devices per process (default 4)
#   PYTHON               interpreter (default: python3)
#   COORDINATOR_PORT     port of process 0's coordinator on 127.0.0.1 (default: a free one)
#   LOG_DIR              where processes 1.. write process_<i>.log (default: a new temporary folder);
#                        process 0 writes to this terminal
#   GRACE_S              after a process fails, seconds the others get to stop on their own (they notice
#                        through missed heartbeats) before they are killed (default 30)
#   DRY_RUN=1            same as --dry-run
#
# Exit status: 0 when every process succeeded, else the status of the first process that failed.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

dry_run="${DRY_RUN:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "error: NUM_PROCESSES is missing (usage: $0 [--dry-run] NUM_PROCESSES [olmo_jax.main args...])" >&2
  exit 2
fi
num_processes="$1"
shift
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES must be a positive integer, got '$num_processes'" >&2
  exit 2
fi
devices="${DEVICES_PER_PROCESS:-4}"
if ! [[ "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: DEVICES_PER_PROCESS must be a positive integer, got '$devices'" >&2
  exit 2
fi
python="${PYTHON:-python3}"
grace="${GRACE_S:-30}"
if [[ -n "${COORDINATOR_PORT:-}" ]]; then
  port="$COORDINATOR_PORT"
else
  # Port 0 asks the kernel for a free port; it stays free for the moment until process 0 binds it.
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"

command_for() {  # fills the array `cmd` with process $1's command; the other arguments go to olmo_jax.main
  local process_id="$1"
  shift
  cmd=(env "XLA_FLAGS=$xla_flags" JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1
    "$python" -m olmo_jax.main "--coordinator_address=127.0.0.1:$port"
    "--num_processes=$num_processes" "--process_id=$process_id" "$@")
}

if [[ "$dry_run" == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    command_for "$i" "$@"
    printf '%q ' "${cmd[@]}"
    if ((i > 0)); then printf '> %q 2>&1 ' "${LOG_DIR:-\$LOG_DIR}/process_$i.log"; fi
    printf '&\n'
  done
  exit 0
fi

log_dir="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/olmo_jax_processes.XXXXXX")}"
mkdir -p "$log_dir"
pids=()
for ((i = 0; i < num_processes; i++)); do
  command_for "$i" "$@"
  if ((i == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done
if ((num_processes > 1)); then
  echo "local_multiprocess: $num_processes processes x $devices devices, coordinator 127.0.0.1:$port;" \
    "processes 1..$((num_processes - 1)) log to $log_dir" >&2
fi

# SIGTERM to this script is passed on (the trainer saves and stops); Ctrl-C already reaches every process.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM

status=0
failed=""
running=("${!pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      still+=("$i")
      continue
    fi
    code=0
    wait "${pids[$i]}" || code=$?
    if ((code != 0 && status == 0)); then
      status=$code
      failed=$i
      echo "local_multiprocess: process $i exited with status $code" >&2
      if ((i > 0)); then
        echo "--- last lines of $log_dir/process_$i.log ---" >&2
        tail -n 20 "$log_dir/process_$i.log" >&2
      fi
      deadline=$((SECONDS + grace))
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if [[ -n "$failed" ]] && ((${#running[@]} > 0 && SECONDS >= deadline)); then
    echo "local_multiprocess: processes ${running[*]} still running ${grace} s after process $failed failed: killing them" >&2
    for i in "${running[@]}"; do kill -KILL "${pids[$i]}" 2>/dev/null || true; done
  fi
  if ((${#running[@]} > 0)); then sleep 0.5; fi
done
exit "$status"
