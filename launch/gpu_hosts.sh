#!/usr/bin/env bash
# One JAX process per line of a hosts file:  launch/gpu_hosts.sh [--dry-run] HOSTS_FILE -- CMD...
#
# HOSTS_FILE: one process per line, `HOST [NAME=VALUE ...]`; blank lines and `# comments` are skipped.
#   HOST is an ssh destination (`gpu0`, `me@gpu0`, an alias of ~/.ssh/config), or `localhost` /
#   `127.0.0.1`: that process starts here, without ssh, in this checkout with this venv (several
#   localhost lines start several local processes). NAME=VALUE words after the host are extra
#   environment for that process only (quote values with spaces: XLA_FLAGS='--a=1 --b=2').
# Every process gets JAX_COORDINATOR_ADDRESS=<first host>:<port>, JAX_NUM_PROCESSES (the number of
# lines) and JAX_PROCESS_ID (its line's index, from 0), which gsjax.parallel.initialize_distributed
# reads. Remote processes run `cd ~/gsjax` (GSJAX_REMOTE_DIR) with that checkout's .venv/bin first
# on PATH; `make install` must have been done there.
#
# Environment: GSJAX_COORDINATOR_PORT (default 12355); GSJAX_COORDINATOR_HOST (default: the first
# host, without user@; needed when the first line is localhost but others are remote);
# GSJAX_REMOTE_DIR (default ~/gsjax); GSJAX_KILL_GRACE seconds between SIGTERM and SIGKILL (5).
#
# --dry-run prints the command each process runs, one line per host (paste one into a shell to start
# that process by hand), and starts nothing. Otherwise all start at once, their output comes back
# prefixed by `[pN] `, and the first one to exit non-zero stops the others (a crashed peer would
# leave the rest blocked in a collective); the launcher exits with its status. Ctrl-C / SIGTERM
# stops them all (started with SIGINT ignored, as under nohup or `&` in a script, bash cannot trap
# it: then only SIGTERM / SIGHUP do). Exit 0 only if every process succeeded. Needs bash >= 4.4.
set -uo pipefail

usage_line="[--dry-run] HOSTS_FILE -- CMD..."
help_lines="2,23p"
source "$(dirname "$0")/common.sh"
parse_options "$@"
set -- "${args[@]}"
[[ $# -ge 1 ]] || usage
hosts_file=$1; shift
[[ ${1:-} == -- ]] && shift
[[ $# -ge 1 ]] || { printf '%s: no command given after the hosts file\n' "$me" >&2; usage; }
cmd=("$@")

[[ -e $hosts_file ]] || die "hosts file '$hosts_file' does not exist"
[[ -f $hosts_file && -r $hosts_file ]] || die "hosts file '$hosts_file' is not a readable file"

# Parse: each line's words (quotes as in a shell, via xargs; nothing is expanded or executed).
hosts=() envs=() linenos=()
n=0
while IFS= read -r line || [[ -n $line ]]; do
  n=$((n + 1))
  line=${line%$'\r'}
  # A `#` that begins a word starts a comment.
  [[ $line =~ (^|[[:space:]])# ]] && line=${line%%"${BASH_REMATCH[0]}"*}
  [[ $line =~ ^[[:space:]]*$ ]] && continue
  printf '%s\n' "$line" | xargs printf '' >/dev/null 2>&1 ||
    die "$hosts_file line $n: cannot split '$line' into words (unbalanced quote?)"
  words=()
  mapfile -d '' -t words < <(printf '%s\n' "$line" | xargs printf '%s\0')
  [[ ${#words[@]} -gt 0 ]] || die "$hosts_file line $n: no host in '$line'"
  [[ ${words[0]} != -* && ${words[0]} != *=* ]] ||
    die "$hosts_file line $n: '${words[0]}' is not a host name (a line is: HOST [NAME=VALUE ...])"
  for w in "${words[@]:1}"; do
    [[ $w =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
      die "$hosts_file line $n: '$w' is not NAME=VALUE (a line is: HOST [NAME=VALUE ...])"
  done
  hosts+=("${words[0]}")
  envs+=("$(qwords "${words[@]:1}")")
  linenos+=("$n")
done < "$hosts_file"
num=${#hosts[@]}
[[ $num -gt 0 ]] || die "hosts file '$hosts_file' lists no hosts (one HOST [NAME=VALUE ...] per line)"

is_local() { [[ $1 == localhost || $1 == 127.0.0.1 ]]; }
any_remote=0
for h in "${hosts[@]}"; do is_local "$h" || any_remote=1; done

port=${GSJAX_COORDINATOR_PORT:-12355}
[[ $port =~ ^[0-9]+$ ]] || die "GSJAX_COORDINATOR_PORT='$port' is not a port number"
coord_host=${GSJAX_COORDINATOR_HOST:-${hosts[0]##*@}}
if [[ -z ${GSJAX_COORDINATOR_HOST:-} ]] && is_local "$coord_host" && [[ $any_remote -eq 1 ]]; then
  die "the first host is $coord_host but other hosts are remote and could not reach it there: put a" \
      "host they can reach first, or set GSJAX_COORDINATOR_HOST to this machine's name"
fi
coordinator=$coord_host:$port

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VIRTUAL_ENV:-$repo/.venv}
default_remote_dir='~/gsjax'
remote_dir=${GSJAX_REMOTE_DIR:-$default_remote_dir}
# Keep a leading ~/ for the remote shell to expand; quote the rest.
if [[ $remote_dir == "~" ]]; then remote_cd='~'
elif [[ $remote_dir == "~/"* ]]; then remote_cd="~/$(q "${remote_dir#\~/}")"
else remote_cd=$(q "$remote_dir"); fi

# The exact command line of each process, as run by `bash -c` here (and printed by --dry-run).
lines=()
for i in "${!hosts[@]}"; do
  jax_env="JAX_COORDINATOR_ADDRESS=$(q "$coordinator") JAX_NUM_PROCESSES=$num JAX_PROCESS_ID=$i"
  extra=${envs[$i]:+ ${envs[$i]}}
  if is_local "${hosts[$i]}"; then
    lines+=("cd $(q "$repo") && exec env PATH=$(q "$venv/bin"):\"\$PATH\" PYTHONUNBUFFERED=1 $jax_env$extra $(qwords "${cmd[@]}")")
  else
    # -tt: the remote process gets SIGHUP when this ssh is stopped, instead of running on alone.
    remote="cd $remote_cd && exec env PATH=\"\$PWD/.venv/bin:\$PATH\" PYTHONUNBUFFERED=1 $jax_env$extra $(qwords "${cmd[@]}")"
    lines+=("ssh -tt $(q "${hosts[$i]}") $(q "$remote")")
  fi
done

if [[ $dry_run -eq 1 ]]; then
  printf '%s\n' "${lines[@]}"
  exit 0
fi

for i in "${!hosts[@]}"; do
  if is_local "${hosts[$i]}" && [[ ! -d $venv/bin ]]; then
    die "$hosts_file line ${linenos[$i]}: localhost runs in this checkout's venv, but $venv/bin does not exist (run make install)"
  fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gsjax_hosts.XXXXXX") || die "cannot create a temporary folder"
pids=()
killed=0

# Waits are the `read` builtin timing out on a pipe nobody writes to, not `sleep`: the launcher then
# never has a child in its own process group, so a Ctrl-C sent to that group always reaches the
# trap below. (With an external `sleep`, a SIGINT that arrived as the child was starting or ending
# was sometimes taken by bash as handled by the child and dropped: about 1 run in 300 under load.)
exec {nap_fd}<> <(:)
nap() { read -r -t "$1" -u "$nap_fd" _; return 0; }

prefix() {  # index: copy stdin to stdout, each line prefixed; survive the group's SIGTERM to drain.
  trap '' INT TERM HUP
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '[p%s] %s\n' "$1" "${line%$'\r'}"
  done
  : > "$tmp/drained.$1"
}

# A process has ended, with everything it started, when its output pipe is closed and its prefixer
# has drained it (this does not depend on when zombies are reaped).
all_drained() { local i; for ((i = 0; i < ${#pids[@]}; i++)); do [[ -e $tmp/drained.$i ]] || return 1; done; }

stop_all() {  # TERM every process group, KILL what is left after the grace
  local pid t=0 grace=${GSJAX_KILL_GRACE:-5}
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  while ! all_drained && (( t < grace * 10 )); do nap 0.1; t=$((t + 1)); done
  if ! all_drained; then
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
    killed=1
  fi
  [[ ${#pids[@]} -gt 0 ]] && wait "${pids[@]}" 2>/dev/null
}

finish() {  # status: let the prefixers flush (at most 2 s), clean up, exit
  local t=0
  while [[ $killed -eq 0 ]] && ! all_drained && (( t < 20 )); do nap 0.1; t=$((t + 1)); done
  rm -rf "$tmp"
  exit "$1"
}

on_signal() {  # name status
  trap '' INT TERM HUP
  printf '%s: %s: stopping all %d processes\n' "$me" "$1" "${#pids[@]}" >&2
  stop_all
  finish "$2"
}
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
trap 'on_signal SIGHUP 129' HUP

# Each process is a job in its own process group (set -m), so that stopping it stops everything it
# started; the terminal's Ctrl-C reaches only this launcher, which then stops them all. (Subshells
# start with the default signal dispositions, not the traps above.)
set -m
for i in "${!lines[@]}"; do
  (
    exec {nap_fd}>&-  # the launcher's own; not passed on to the processes
    bash -c "${lines[$i]}" < /dev/null > >(prefix "$i") 2>&1
    rc=$?
    printf '%s\n' "$rc" > "$tmp/rc.$i.part" && mv "$tmp/rc.$i.part" "$tmp/rc.$i"
    exit "$rc"
  ) &
  pids+=("$!")
done
set +m

done_count=0
declare -A reported=()
while (( done_count < num )); do
  for i in "${!pids[@]}"; do
    [[ -n ${reported[$i]:-} ]] && continue
    if [[ -e $tmp/rc.$i ]]; then
      read -r rc < "$tmp/rc.$i"
    elif ! kill -0 "${pids[$i]}" 2>/dev/null; then
      wait "${pids[$i]}"; rc=$?  # ended without reporting: killed from outside
      [[ $rc -eq 0 ]] && rc=1
    else
      continue
    fi
    reported[$i]=1; done_count=$((done_count + 1))
    if [[ $rc -ne 0 ]]; then
      trap '' INT TERM HUP
      printf '%s: process %d (%s, %s line %d) exited with status %d; stopping the others\n' \
        "$me" "$i" "${hosts[$i]}" "$hosts_file" "${linenos[$i]}" "$rc" >&2
      stop_all
      finish "$rc"
    fi
  done
  (( done_count < num )) && nap 0.1
done
finish 0
