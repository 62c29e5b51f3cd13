#!/usr/bin/env bash
# A daemonised hello world: a service whose task loops forever, printing a line a second; `service ps`
# shows it running, its logs grow, and removing the service stops it.
source "$(dirname "$0")/lib.sh"
on_exit ask service rm hello-daemon

say "Start a service that never ends"
swarm service create --name hello-daemon busybox sh -c 'while true; do echo hello world; sleep 1; done'
swarm service ps hello-daemon
running hello-daemon 1 || fail "the loop is not running"

say "It keeps working"
sleep 2
swarm service logs --tail 3 hello-daemon
lines=$(ask service logs --raw hello-daemon | grep -c "hello world" || true)
((lines >= 2)) || fail "only $lines lines of output after 2 seconds"
ok "the task runs and prints a line a second ($lines so far)"

say "Stop it"
swarm service rm hello-daemon
wait_for 30 "the service to go" gone hello-daemon
swarm service ls
ok "the service and its task are gone"
