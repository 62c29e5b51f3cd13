#!/usr/bin/env bash
# Networks (the user guide's "network containers"): make an overlay network, run a database on it, and
# connect a front end to it: until then the front end cannot find the database by name; once it is on
# the network, it reaches it. Then take everything down and remove the network.
source "$(dirname "$0")/lib.sh"
on_exit ask network rm app-net
on_exit ask service rm db front
url="http://$PUBLISHED_ADDR:8082/"

say "Create an overlay network"
swarm network create --driver overlay app-net
swarm network ls --filter name=app-net

say "A database on it (a web server standing in for one)"
swarm service create --name db --network app-net busybox \
  sh -c 'mkdir -p /www && echo "db here" > /www/index.html && exec httpd -f -p 80 -h /www'

say "A front end that serves what it gets from http://db/ (not on app-net yet)"
swarm service create --name front --publish 8082:80 busybox \
  sh -c 'mkdir -p /www; until wget -q -O /www/index.html http://db/; do sleep 1; done; exec httpd -f -p 80 -h /www'
sleep 3
if answers "$url" "db here"; then fail "the front end reached db without being on its network"; fi
ok "the front end cannot find db: they share no network"

say "Connect the front end to app-net"
swarm service update --network-add app-net front
wait_for 60 "the front end to reach db" answers "$url" "db here"
show_fetch "$url"
swarm network inspect --format '{{.Spec.Name}} {{.Spec.Driver}} {{json .Status.Ipam}}' app-net
ok "on the same network, the front end finds db by name"

say "Remove the services, then the network"
swarm service rm front db
wait_for 60 "the network to be free" "$SWARMCTL" network rm app-net
swarm network ls
if ask network ls -q --filter name=app-net | grep -q .; then fail "app-net is still there"; fi
ok "the network is gone"
