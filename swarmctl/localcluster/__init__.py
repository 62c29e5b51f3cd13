"""A local cluster on one machine: hosts as network namespaces, with etcd, a manager and agents."""
