# Shared by the walkthroughs (sourced, not run): how to reach the cluster, show and run commands, wait
# for something to hold, fail. Every walkthrough removes what it made when it ends, even on failure.
set -euo pipefail

GUIDE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$GUIDE_DIR/../.." && pwd)
# swarmctl from the repository's virtualenv (make setup), or the one on the PATH.
if [[ -z "${SWARMCTL:-}" ]]; then
  if [[ -x "$REPO_DIR/.venv/bin/swarmctl" ]]; then SWARMCTL="$REPO_DIR/.venv/bin/swarmctl"; else SWARMCTL=swarmctl; fi
fi
# The local cluster of `make up` (swarmctl cluster up); point SHOAL_HOST elsewhere for another cluster.
export SHOAL_HOST=${SHOAL_HOST:-unix:///var/lib/shoal/local/manager.sock}
# Where the local cluster's published ports answer on this machine.
PUBLISHED_ADDR=${SHOAL_PUBLISHED_ADDR:-127.0.0.1}

# say TEXT: a step of the walkthrough.
say() { printf '\n== %s\n' "$*"; }
# shown ARGS: a command line as a user would type it (arguments with spaces or quotes in quotes).
shown() {
  local arg out=""
  for arg in "$@"; do
    if [[ $arg =~ ^[][A-Za-z0-9_./:=,@%+{}-]+$ ]]; then out+=" $arg"; else out+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "${out# }"
}
# swarm ARGS: show a swarmctl command, and run it.
swarm() { printf '$ swarmctl %s\n' "$(shown "$@")"; "$SWARMCTL" "$@"; }
# ask ARGS: run swarmctl without showing it (to check what the walkthrough claims).
ask() { "$SWARMCTL" "$@"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }
# wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or fail saying WHAT did not happen.
wait_for() {
  local limit=$1 what=$2 end
  shift 2
  end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || fail "$what (waited ${limit}s)"
    sleep 0.5
  done
}
# fetch URL: the body of a GET, as curl -s prints it (curl, or Python where curl is missing).
fetch() {
  if command -v curl >/dev/null; then
    curl -fsS --max-time 5 "$1"
  else
    python3 -c 'import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
  fi
}
# show_fetch URL: fetch it as the user would, showing the command.
show_fetch() { printf '$ curl %s\n' "$1"; fetch "$1"; }
# answers URL TEXT: whether URL answers with a body containing TEXT.
answers() { fetch "$1" 2>/dev/null | grep -q -- "$2"; }
# closed URL: whether nothing answers at URL.
closed() { ! fetch "$1" >/dev/null 2>&1; }
# gone SERVICE: whether the service is no longer listed.
gone() { ! ask service ls -q --filter "name=$1" | grep -q .; }
# states SERVICE: the current states of the service's tasks, one a line ("Running", "Complete" …).
states() { ask service ps "$1" --format '{{.CurrentState}}' | awk '{print $1}'; }
# running SERVICE N: whether exactly N tasks of SERVICE are running (among those meant to run).
running() {
  local n
  n=$(ask service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true)
  [[ $n -eq $2 ]]
}
# on_exit COMMAND: clean up with COMMAND when the walkthrough ends (quietly, errors ignored).
on_exit() { CLEANUP+=("$*"); }
CLEANUP=()
_cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" >/dev/null 2>&1 || true; done
}
trap _cleanup EXIT
ask node ls >/dev/null 2>&1 || fail "no cluster answers at $SHOAL_HOST (start one with: make up)"
# registry: the cluster's registry (HOST:PORT): SHOAL_REGISTRY, or the one `make up` runs on host0.
registry() {
  if [[ -n ${SHOAL_REGISTRY:-} ]]; then
    echo "$SHOAL_REGISTRY"
    return
  fi
  local dir=${SHOAL_HOST#unix://}
  "$SWARMCTL" cluster status --dir "${dir%/*}" | sed -n 's/.*; registry \([^)]*\)).*/\1/p'
}
# container_state NAME: the container's state (running, exited …).
container_state() { ask container inspect --format '{{.State.Status}}' "$1"; }
# capture ARGS: like swarm, and keeps what the command printed in OUT.
capture() {
  printf '$ swarmctl %s\n' "$(shown "$@")"
  OUT=$("$SWARMCTL" "$@")
  printf '%s\n' "$OUT"
}
