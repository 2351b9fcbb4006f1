"""Cloud-side CRDT state in Redis: the networked store for a sync service that others read.

Layout under a namespace (default ``sparkiot``):

| key | type | content |
|---|---|---|
| ``NS:crdt:SITE`` | hash | CRDT key → encoded state of the site |
| ``NS:fleet`` | hash | CRDT key → encoded join over all sites |
| ``NS:values:SITE``, ``NS:values:*`` | hash | CRDT key → the value as JSON text, for any Redis client |
| ``NS:versions:SITE`` | hash | replica → sequence number merged without a gap |
| ``NS:sites`` | set | the sites seen |
| ``NS:dead_letters`` | list | rejected sync messages as JSON, newest first, capped |

:meth:`RedisCrdtStore.apply` reads, joins and writes inside a ``WATCH``/``MULTI`` transaction and
retries when another writer changed a watched key, so two sync services on one Redis never lose
each other's merges. A CRDT join cannot run inside Redis (a Lua script would have to re-implement
every type), hence the optimistic read-modify-write.
"""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlparse

import redis

from sparkiot.edge.crdt import CrdtMap
from sparkiot.state.crdt_store import (
    FLEET,
    KEPT_DEAD_LETTERS,
    DecodedGroup,
    Rejected,
    advance,
    describe,
    join_groups,
    merged_entries,
)


class RedisCrdtStore:
    """CRDT entries and version vectors in Redis at ``url`` (``redis://HOST:PORT/DB``)."""

    def __init__(self, url: str, *, namespace: str = "sparkiot") -> None:
        parsed = urlparse(url)
        if parsed.scheme != "redis" or not parsed.hostname or parsed.path.strip("/") not in ("", *map(str, range(16))):
            raise ValueError(f"invalid Redis URL {url!r}: use redis://HOST:PORT/DB, such as redis://127.0.0.1:6379/0")
        self.url = url
        self.ns = namespace
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"cannot reach Redis at {url}: {exc}; check that it runs and the URL") from None

    def close(self) -> None:
        self._redis.close()

    def _state_key(self, scope: str) -> str:
        return f"{self.ns}:fleet" if scope == FLEET else f"{self.ns}:crdt:{scope}"

    def apply(self, site: str, replica: str, groups: list[DecodedGroup], rejected: list[Rejected] | None = None) -> dict[str, int]:
        rejected = [] if rejected is None else rejected
        delta = join_groups(groups)
        keys = list(delta.keys())
        site_key, fleet_key = self._state_key(site), self._state_key(FLEET)
        versions_key = f"{self.ns}:versions:{site}"
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(site_key, fleet_key, versions_key)
                    writes = {}
                    attempt: list[Rejected] = []
                    for scope, state_key in ((site, site_key), (FLEET, fleet_key)):
                        stored = pipe.hmget(state_key, keys) if keys else []
                        writes[scope] = merged_entries(dict(zip(keys, stored)), delta, scope=scope, rejected=attempt)
                    versions = {name.decode(): int(value) for name, value in pipe.hgetall(versions_key).items()}
                    versions[replica] = advance(versions.get(replica, 0), groups)
                    pipe.multi()
                    for scope, merged in writes.items():
                        if merged:
                            pipe.hset(self._state_key(scope), mapping={key: state.to_bytes() for key, state in merged.items()})
                            pipe.hset(f"{self.ns}:values:{scope}", mapping={key: json.dumps(describe(state)) for key, state in merged.items()})
                    pipe.hset(versions_key, replica, versions[replica])
                    pipe.sadd(f"{self.ns}:sites", site)
                    pipe.execute()
                    rejected.extend(attempt)
                    return versions
                except redis.WatchError:
                    continue

    def versions(self, site: str) -> dict[str, int]:
        stored = self._redis.hgetall(f"{self.ns}:versions:{site}")
        return {replica.decode(): int(seq) for replica, seq in stored.items()}

    def _state(self, scope: str) -> CrdtMap:
        stored = self._redis.hgetall(self._state_key(scope))
        return CrdtMap.from_entries({key.decode(): data for key, data in stored.items()})

    def site_state(self, site: str) -> CrdtMap:
        return self._state(site)

    def fleet_state(self) -> CrdtMap:
        return self._state(FLEET)

    def sites(self) -> list[str]:
        return sorted(member.decode() for member in self._redis.smembers(f"{self.ns}:sites"))

    def put_dead_letter(self, *, topic: str, reason: str, detail: str, raw: bytes) -> None:
        document = {
            "received_us": time.time_ns() // 1000, "topic": topic, "reason": reason, "detail": detail[:500],
            "raw_base64": base64.b64encode(raw[:4096]).decode(), "raw_size": len(raw),
        }
        key = f"{self.ns}:dead_letters"
        with self._redis.pipeline() as pipe:
            pipe.lpush(key, json.dumps(document))
            pipe.ltrim(key, 0, KEPT_DEAD_LETTERS - 1)
            pipe.execute()

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """Return ``(reason, topic, detail)`` of the kept dead letters, oldest first."""
        documents = [json.loads(item) for item in reversed(self._redis.lrange(f"{self.ns}:dead_letters", 0, -1))]
        return [(d["reason"], d["topic"], d["detail"]) for d in documents]

    def clear(self) -> None:
        """Delete every key of the namespace (tests and benchmarks start from an empty store)."""
        for key in self._redis.scan_iter(match=f"{self.ns}:*", count=1000):
            self._redis.delete(key)
