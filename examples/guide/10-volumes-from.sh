#!/usr/bin/env bash
# Data volume containers (the user guide's backup, restore and migration of data volumes): a container
# keeps its data in a volume; another, given --volumes-from, is placed on the same node by the scheduler
# (it needs the first one's volume), backs the data up into a directory of this machine, and a third
# restores it into a new data container.
source "$(dirname "$0")/lib.sh"
backup=$(mktemp -d)
on_exit rm -rf "$backup"
on_exit ask container rm -f -v dbstore dbstore2

say "A data container on host3 with a volume at /dbdata"
swarm container run --name dbstore -v /dbdata --constraint node==host3 busybox \
  sh -c 'echo "the data of dbstore" > /dbdata/records'
swarm container ls -a --filter name=dbstore

say "Back it up: a container with --volumes-from dbstore (it goes where dbstore is) tars /dbdata"
swarm container run --rm --volumes-from dbstore -v "$backup:/backup" busybox tar cvf /backup/backup.tar /dbdata
ls -l "$backup"
[[ -s $backup/backup.tar ]] || fail "no backup.tar"
ok "backed up to $backup/backup.tar"

say "Restore it into a new data container"
swarm container run --name dbstore2 -v /dbdata busybox true
swarm container run --rm --volumes-from dbstore2 -v "$backup:/backup" busybox \
  tar xvf /backup/backup.tar -C /
capture container run --rm --volumes-from dbstore2 busybox cat /dbdata/records
out=$OUT
[[ $out == "the data of dbstore" ]] || fail "dbstore2 holds '$out'"
ok "dbstore2 has dbstore's data"

say "Remove the data containers and their volumes"
swarm container rm -v dbstore dbstore2
if ask container ls -a -q --filter name=dbstore | grep -q .; then fail "a data container is left"; fi
ok "done"
