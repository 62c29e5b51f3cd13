"""Orchestrators: plain reconcile functions ``(desired, observed, now) -> Plan``.

Each function here is pure: it reads a service, its tasks and the nodes and says which tasks to create,
which to change and which to delete. The leader's async loops (manager/leader.py) watch the store,
debounce, call these and write the plan back conditionally. Keeping the decisions pure lets the tests
drive every case without a cluster.
"""
