"""Shoal's KV store layer: one async :class:`KVStore` protocol and adapters for etcd, ZooKeeper, Consul and
an in-process store, chosen by URL (``open_store("etcd://127.0.0.1:2379/shoal")``)."""

from kvstore_adapters.base import (
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    KVStore,
    Lease,
    Op,
    Put,
    RangeResult,
    StoreInfo,
    StoreURL,
    TxnResult,
    Watch,
)
from kvstore_adapters.errors import (
    CompactedError,
    InvalidStoreURL,
    KVError,
    LeadershipLost,
    LeaseNotFound,
    StoreUnavailable,
)
from kvstore_adapters.registry import open_store, parse_store_url, store_from_url

__all__ = [
    "CompactedError",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "InvalidStoreURL",
    "KVError",
    "KVStore",
    "KeyValue",
    "LeadershipLost",
    "Lease",
    "LeaseNotFound",
    "Op",
    "Put",
    "RangeResult",
    "StoreInfo",
    "StoreURL",
    "StoreUnavailable",
    "TxnResult",
    "Watch",
    "open_store",
    "parse_store_url",
    "store_from_url",
]
