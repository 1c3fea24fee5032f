# Shared by the launchers (sourced): POSIX shell quoting and the --dry-run / --help option loop.
# The sourcing script sets `usage_line` and `help_lines` (the sed range of its header comment) first.

me=${0##*/}
die() { printf '%s: %s\n' "$me" "$*" >&2; exit 2; }
usage() { printf 'usage: %s %s\n' "$me" "$usage_line" >&2; exit 2; }

# POSIX shell quoting, as Python's shlex.quote: works in sh, bash, zsh, dash.
q() {
  if [[ -n $1 && $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}
qwords() { local w out=(); for w in "$@"; do out+=("$(q "$w")"); done; printf '%s' "${out[*]}"; }

# Options before the positional arguments; sets dry_run, leaves "$@" for the caller via `args`.
parse_options() {
  dry_run=0
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dry-run) dry_run=1; shift ;;
      -h|--help) sed -n "$help_lines" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      --) break ;;
      -*) printf '%s: unknown option %s\n' "$me" "$1" >&2; usage ;;
      *) break ;;
    esac
  done
  args=("$@")
}
