#!/usr/bin/env bash
# Labels (the user guide's labels, on nodes, services and containers): label two nodes, filter the node list
# by a label, place a service by a label constraint, find services by their own labels, and containers too.
source "$(dirname "$0")/lib.sh"
on_exit ask node update --label-rm zone host1
on_exit ask node update --label-rm zone host2
on_exit ask service rm east-app
on_exit ask container rm -f labelled-db labelled-web

say "Label host1 and host2 with the zone they are in"
swarm node update --label-add zone=east host1
swarm node update --label-add zone=west host2
swarm node inspect --format '{{.Status.Description.Hostname}}: {{json .Spec.Annotations.Labels}}' host1 host2

say "Which nodes are in the east?"
swarm node ls --filter node.label=zone=east
[[ $(ask node ls --filter node.label=zone=east --format '{{.Hostname}}') == host1 ]] ||
  fail "the filter does not give host1 alone"
ok "host1 alone is in the east"

say "A service for the east only, with a label of its own"
swarm service create --name east-app --replicas 3 --constraint node.labels.zone==east --label tier=edge \
  busybox sleep 100000
swarm service ps east-app
nodes=$(ask service ps east-app --filter desired-state=running --format '{{.Node}}' | sort -u)
[[ $nodes == host1 ]] || fail "tasks ran on: $nodes"
ok "all three tasks run on host1"

say "Find services by label"
swarm service ls --filter label=tier=edge
[[ $(ask service ls --filter label=tier=edge --format '{{.Name}}') == east-app ]] || fail "no east-app"
ok "the label finds east-app"

say "Containers with labels, found by them on every node"
swarm container run -d --name labelled-db -l tier=db -l owner=guide busybox sleep 100000
swarm container run -d --name labelled-web -l tier=web -l owner=guide busybox sleep 100000
swarm container ls --filter label=owner=guide
[[ $(ask container ls --filter label=tier=db --format '{{.Names}}') == */labelled-db ]] ||
  fail "the label does not find labelled-db alone"
swarm container inspect --format '{{json .Config.Labels}}' labelled-web
swarm container rm -f labelled-db labelled-web
ok "labels find containers wherever they run"

say "Clean up: the service and the labels"
swarm service rm east-app
swarm node update --label-rm zone host1
swarm node update --label-rm zone host2
if ask node ls --filter node.label=zone --format '{{.Hostname}}' | grep -q .; then fail "labels left"; fi
ok "done"
