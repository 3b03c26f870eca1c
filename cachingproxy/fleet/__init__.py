"""
The fleet tier: a cache shared by many proxy machines, kept in Redis (or
Valkey), single node or Redis Cluster.

  - L{cachingproxy.fleet.redis}: the Redis client on Twisted (pipelining,
    deadlines, pools, cluster routing, scripts, pub/sub);
  - L{cachingproxy.fleet.breaker}: a circuit breaker per node and a bounded
    write queue;
  - L{cachingproxy.fleet.store}: L{FleetStore}, entries, fill locks, purges
    and the purge log, on plain Python values.
"""
