#!/usr/bin/env bash
# Hello world (the user guide's first container): a one-replica service that says "hello world" and
# completes. A task that ends is not restarted with --restart-condition none, as `docker run` would not.
source "$(dirname "$0")/lib.sh"
on_exit ask service rm hello
completed() { [[ $(ask service ps hello --format '{{.CurrentState}}') == Complete* ]]; }

say "Run a command in a new service's task"
swarm service create --detach --name hello --restart-condition none busybox echo hello world
wait_for 60 "the hello task to complete" completed
swarm service ps hello

say "What it printed"
swarm service logs hello
ask service logs --raw hello | grep -qx "hello world" || fail "the task did not print hello world"
ok "the task printed hello world and completed"
