#!/usr/bin/env bash
# A web application (the user guide's `docker run -d -P training/webapp`): a web server whose port is
# published without a number, so the cluster picks one; it answers on every host through the routing
# mesh, and here on this machine. Then inspect it, scale it (the answers come from more tasks), remove it.
source "$(dirname "$0")/lib.sh"
on_exit ask service rm webapp

say "Run a web server, publishing its port 80 on a port the cluster chooses"
swarm service create --name webapp --replicas 2 --publish 80 busybox \
  sh -c 'mkdir -p /www && echo "Hello from $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'
swarm service ls --filter name=webapp

say "Which port? (service inspect)"
swarm service inspect --format '{{json .Status.Endpoint.Ports}}' webapp
port=$(ask service inspect --format '{{index .Status.Endpoint.Ports 0 | json}}' webapp |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["published_port"])')
[[ $port =~ ^[0-9]+$ ]] || fail "no published port in the service's endpoint ($port)"
ok "published on port $port"

say "It answers (every host does; here through 127.0.0.1)"
url="http://$PUBLISHED_ADDR:$port/"
wait_for 30 "$url to answer" answers "$url" "Hello from"
show_fetch "$url"

say "Scale it to 3; connections are spread over every task"
swarm service scale webapp=3
swarm service ps webapp
running webapp 3 || fail "3 tasks are not running"
seen=$(for _ in 1 2 3 4 5 6; do fetch "$url"; done | sort -u)
printf '%s\n' "$seen"
[[ $(wc -l <<<"$seen") -eq 3 ]] || fail "6 requests reached $(wc -l <<<"$seen") tasks, not 3"
ok "3 tasks answer in turn"

say "Remove it; the port closes"
swarm service rm webapp
wait_for 30 "$url to stop answering" closed "$url"
ok "the service is gone and its port with it"
