#!/usr/bin/env bash
# Multi-host networking (the user guide's overlay walkthrough): an overlay network with a subnet of our
# choosing, a web server named "web" pinned to host1, and on host2 a task that fetches http://web/ by
# name across the hosts and serves what it got, so we can see it here.
source "$(dirname "$0")/lib.sh"
on_exit ask network rm my-net
on_exit ask service rm web fetcher
url="http://$PUBLISHED_ADDR:8084/"

say "An overlay network spanning the cluster's hosts"
swarm network create --driver overlay --subnet 10.0.9.0/24 my-net

say "A web server named web, on host1"
swarm service create --name web --network my-net --constraint node.hostname==host1 busybox \
  sh -c 'mkdir -p /www && echo "web on $(hostname) at $(ip -4 -o addr show eth0 | awk "{print \$4}")" > /www/index.html && exec httpd -f -p 80 -h /www'
swarm service ps web

say "On host2, fetch http://web/ by name"
swarm service create --name fetcher --network my-net --constraint node.hostname==host2 --publish 8084:80 busybox \
  sh -c 'mkdir -p /www; until wget -q -O /www/index.html http://web/; do sleep 1; done; exec httpd -f -p 80 -h /www'
swarm service ps fetcher
[[ $(ask service ps web --filter desired-state=running --format '{{.Node}}') == host1 ]] || fail "web is not on host1"
[[ $(ask service ps fetcher --filter desired-state=running --format '{{.Node}}') == host2 ]] || fail "fetcher is not on host2"
wait_for 30 "the fetcher to get web's page" answers "$url" "web on"
show_fetch "$url"
fetch "$url" | grep -q "at 10\.0\.9\." || fail "web's address is not in my-net's subnet"
ok "a task on host2 reached web on host1 by name, over my-net (10.0.9.0/24)"

say "Clean up"
swarm service rm web fetcher
wait_for 60 "the network to be free" "$SWARMCTL" network rm my-net
ok "done"
