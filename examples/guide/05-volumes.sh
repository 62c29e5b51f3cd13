#!/usr/bin/env bash
# Volumes (the user guide's "manage data in containers"): a named volume mounted by a service keeps its
# data when the service's task is replaced. Each start appends a line to a file on the volume, which the
# task serves; after a restart there are two lines. (A local volume lives on one host, so the service is
# kept on host1 by a constraint.)
source "$(dirname "$0")/lib.sh"
on_exit ask volume rm notes
on_exit ask service rm notes
url="http://$PUBLISHED_ADDR:8083/"
lines() { [[ $(fetch "$url" | wc -l) -eq $1 ]]; }

say "Create a named volume"
swarm volume create notes
swarm volume ls

say "A service writing to it (one line per start) and serving what is there"
swarm service create --name notes --constraint node.hostname==host1 \
  --mount type=volume,source=notes,target=/data --publish 8083:80 busybox \
  sh -c 'echo "started at $(date +%T) by $(hostname)" >> /data/index.html && exec httpd -f -p 80 -h /data'
wait_for 30 "the service to answer" answers "$url" "started at"
show_fetch "$url"
lines 1 || fail "a fresh volume should hold one line"

say "Restart the task (a new container, the same volume)"
swarm service update --force notes
swarm service ps notes
wait_for 30 "the new task to add its line" lines 2
show_fetch "$url"
ok "the data outlived the task that wrote it"

say "Remove the service, then the volume"
swarm service rm notes
wait_for 60 "the volume to be free" "$SWARMCTL" volume rm notes
if ask volume ls -q | grep -qx notes; then fail "the volume is still there"; fi
ok "the volume is gone"
