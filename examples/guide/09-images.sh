#!/usr/bin/env bash
# Images (the user guide's "build your own images" and "store images on a registry", without a build):
# list the images of every node, pull from the cluster's registry everywhere, tag an image as your own on
# one node, push it, pull and run it on another node, save and load it, and remove it (rmi).
source "$(dirname "$0")/lib.sh"
reg=$(registry)
[[ -n $reg ]] || fail "no registry (make up starts one; or set SHOAL_REGISTRY=HOST:PORT)"
mine="$reg/guide/hello:v1"
tarball=$(mktemp --suffix=.tar)
on_exit rm -f "$tarball"
on_exit ask image rm -f "$mine"
on_exit ask image rm -f guide/loaded:v1

say "The images on every node"
swarm image ls

say "Pull busybox from the cluster's registry ($reg) on every node"
swarm image pull "$reg/busybox"
n=$(ask image ls --format '{{.Repository}} {{.Node}}' | grep -c "^$reg/busybox ")
nodes=$(ask node ls -q | wc -l)
((n >= nodes)) || fail "$reg/busybox is on $n of $nodes nodes"
ok "every node has it"

say "Make it your own image on host1, and push it"
swarm image tag --node host1 busybox "$mine"
swarm image push --node host1 "$mine"

say "Pull it on host2 and run a container of it there"
swarm image pull --node host2 "$mine"
capture container run --rm --constraint node==host2 "$mine" echo "hello from my image"
out=$OUT
[[ $out == "hello from my image" ]] || fail "the container printed '$out'"
ok "pushed from host1, pulled and run on host2"

say "Save it to a file, and load that under another name on every node"
swarm image save --node host1 -o "$tarball" "$mine"
ls -l "$tarball"
swarm image load -i "$tarball"
swarm image tag "$mine" guide/loaded:v1
ask image ls --format '{{.Repository}}:{{.Tag}} {{.Node}}' | grep -q '^guide/loaded:v1 host3' ||
  fail "the loaded image is not on host3"
ok "loaded everywhere"

say "Remove them (rmi)"
swarm image rm -f guide/loaded:v1
swarm image rm -f "$mine"
if ask image ls --format '{{.Repository}}:{{.Tag}}' | grep -q -e "^$mine\$" -e '^guide/loaded:v1$'; then
  fail "an image is left"
fi
ok "gone from every node"
