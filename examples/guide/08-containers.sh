#!/usr/bin/env bash
# Single containers (the user guide's hello world, daemonised hello world and simple web application), as
# classic Swarm ran them: `container run` asks the cluster, which picks a node. Hello world prints and
# exits; a daemon is listed, its logs read, stopped, started again and removed; a web server publishes its
# port on a port its node picks (-P) and is fetched from a container on another node; top and inspect.
source "$(dirname "$0")/lib.sh"
on_exit ask container rm -f daemon web

say "Hello world: the cluster runs it somewhere and you see its output"
capture container run --rm busybox echo hello world
out=$OUT
[[ $out == "hello world" ]] || fail "the container printed '$out'"
ok "hello world"

say "A daemonised hello world"
swarm container run -d --name daemon busybox sh -c 'while true; do echo hello world; sleep 1; done'
swarm container ls --filter name=daemon
has_lines() { [[ $(ask container logs daemon | grep -c 'hello world') -ge 2 ]]; }
wait_for 20 "two lines of output" has_lines
swarm container logs --tail 2 daemon
swarm container stop -t 1 daemon
[[ $(container_state daemon) == exited ]] || fail "daemon is $(container_state daemon) after stop"
swarm container start daemon
[[ $(container_state daemon) == running ]] || fail "daemon is $(container_state daemon) after start"
swarm container rm -f daemon
if ask container ls -a -q --filter name=daemon | grep -q .; then fail "daemon is still there"; fi
ok "listed, logged, stopped, started, removed"

say "A web application on host2, its port 80 published on a port the node picks (--expose 80 -P)"
swarm container run -d --expose 80 -P --name web --constraint node==host2 busybox \
  sh -c 'mkdir -p /www && echo "Hello from the web container" > /www/index.html && exec httpd -f -p 80 -h /www'
swarm container port web 80
port=$(ask container port web 80 | head -n1 | sed 's/.*://')
addr=$(ask container inspect --format '{{.Node.Addr}}' web)
[[ $port =~ ^[0-9]+$ && -n $addr ]] || fail "no published port ($port) or node address ($addr)"
ok "published on $addr:$port"

say "Fetch it from a container on host1"
fetched() { ask container run --rm --constraint node==host1 busybox wget -q -O- "http://$addr:$port/" 2>/dev/null; }
wait_for 20 "the page from host1" eval 'fetched | grep -q "Hello from the web container"'
swarm container run --rm --constraint node==host1 busybox wget -q -O- "http://$addr:$port/"

say "What runs in it (top), and how it is set up (inspect)"
swarm container top web
ask container top web | grep -q httpd || fail "httpd is not among its processes"
swarm container inspect --format '{{.Name}} on {{.Node.Name}}: {{.State.Status}}, {{.Config.Image}}' web
swarm container rm -f web
ok "the web application ran, answered and is gone"
