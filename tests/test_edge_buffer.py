"""The edge agent's SQLite store: the size bound and its overflow policies, expiry, deltas."""

from __future__ import annotations

from sparkiot.edge.buffer import DeltaGroup, EdgeStore


def store_with(tmp_path, sizes: list[int], *, max_bytes: int, overflow: str):
    store = EdgeStore(tmp_path / "edge.sqlite", durability="normal")
    results = []
    for index, size in enumerate(sizes):
        store.begin()
        results.append(store.append([(1_000 + index, 10, bytes([index]) * size)], max_bytes=max_bytes, overflow=overflow))
        store.commit()
    return store, results


def test_buffer_drop_oldest(tmp_path):
    store, results = store_with(tmp_path, [400, 400, 400, 400], max_bytes=1000, overflow="drop_oldest")
    remaining = [message.payload[0] for message in store.outgoing(after_seq=0)]
    assert remaining == [2, 3]
    assert store.totals() == (2, 20, 800)
    assert [r.dropped_readings for r in results] == [0, 0, 10, 10]


def test_buffer_refuse_new(tmp_path):
    store, results = store_with(tmp_path, [400, 400, 400, 100], max_bytes=1000, overflow="refuse_new")
    remaining = [message.payload[0] for message in store.outgoing(after_seq=0)]
    assert remaining == [0, 1, 3]
    assert [r.refused_readings for r in results] == [0, 0, 10, 0]


def test_buffer_rejects_oversized_message(tmp_path):
    store, results = store_with(tmp_path, [100, 5000], max_bytes=1000, overflow="drop_oldest")
    assert [m.payload[0] for m in store.outgoing(after_seq=0)] == [0]
    assert results[1].refused_readings == 10


def test_remove_returns_readings_of_messages_still_present(tmp_path):
    store, _ = store_with(tmp_path, [10, 10, 10], max_bytes=10_000, overflow="drop_oldest")
    seqs = [m.seq for m in store.outgoing(after_seq=0)]
    assert store.remove([seqs[0], seqs[2]]) == 20
    assert store.remove([seqs[0]]) == 0
    assert store.totals() == (1, 10, 10)


def test_sequence_numbers_are_not_reused_after_deletes(tmp_path):
    store, _ = store_with(tmp_path, [10, 10], max_bytes=10_000, overflow="drop_oldest")
    store.remove([m.seq for m in store.outgoing(after_seq=0)])
    store.begin()
    store.append([(5, 1, b"x")], max_bytes=10_000, overflow="drop_oldest")
    store.commit()
    assert [m.seq for m in store.outgoing(after_seq=0)] == [3]
    assert store.max_seq() == 3


def test_expire_drops_messages_older_than_the_cutoff(tmp_path):
    store, _ = store_with(tmp_path, [10, 10, 10], max_bytes=10_000, overflow="drop_oldest")
    assert store.expire(older_than_us=1_002) == 20
    assert [m.added_us for m in store.outgoing(after_seq=0)] == [1_002]


def test_outgoing_respects_the_upper_bound(tmp_path):
    store, _ = store_with(tmp_path, [10] * 5, max_bytes=10_000, overflow="drop_oldest")
    assert [m.seq for m in store.outgoing(after_seq=1, up_to_seq=3)] == [2, 3]


def test_store_survives_reopening(tmp_path):
    store, _ = store_with(tmp_path, [10, 20], max_bytes=10_000, overflow="drop_oldest")
    store.begin()
    store.put_delta(DeltaGroup(0, 1, b"d1"))
    store.put_entries({"readings": b"c"})
    store.set_meta("seq", 1)
    store.commit()
    store.close()
    reopened = EdgeStore(tmp_path / "edge.sqlite")
    assert reopened.totals() == (2, 20, 30)
    assert reopened.deltas(after_seq=0) == [DeltaGroup(0, 1, b"d1")]
    assert (reopened.entries(), reopened.get_meta("seq")) == ({"readings": b"c"}, 1)


def test_rollback_leaves_nothing_behind(tmp_path):
    store = EdgeStore(tmp_path / "edge.sqlite")
    store.begin()
    store.append([(1, 5, b"abc")], max_bytes=10_000, overflow="drop_oldest")
    store.put_delta(DeltaGroup(0, 1, b"d"))
    store.rollback()
    assert (store.totals(), store.delta_count()) == ((0, 0, 0), 0)


def test_kept_dead_letters_are_bounded_oldest_first(tmp_path):
    from sparkiot.readings import DeadLetter

    store = EdgeStore(tmp_path / "edge.sqlite")
    letters = [DeadLetter(b"raw%d" % i, 4, "t", "invalid_json", f"bad {i}", i) for i in range(5)]
    store.begin()
    store.put_dead_letters(letters, keep=3)
    store.commit()
    assert [row[2] for row in store.dead_letters()] == ["bad 2", "bad 3", "bad 4"]


def test_state_keys_escape_slashes():
    from sparkiot.edge.state import EdgeState
    from sparkiot.readings import Reading

    state = EdgeState("r")
    state.observe([Reading("a/b", "c", 1, 1.0, None, "s", "1", 0, "t"), Reading("a", "b/c", 1, 100.0, None, "s", "2", 0, "t")])

    assert state.state.get("summary/a%2Fb/c").value().max == 1.0
    assert state.state.get("summary/a/b%2Fc").value().max == 100.0


def test_protocol_rejects_huge_sequence_numbers():
    import pytest

    from sparkiot.edge import protocol

    with pytest.raises(protocol.ProtocolError, match="must be an integer from 0 to 2"):
        protocol.decode_hello(protocol.encode_hello("r", 2**62))


def test_protocol_rejects_groups_without_room_after_them():
    import pytest

    from sparkiot.edge import protocol

    payload = protocol.encode_delta("r", [protocol.Group(4, 2**53 - 1, b"\xa0")])

    with pytest.raises(protocol.ProtocolError, match="beyond the largest group number"):
        protocol.decode_delta(payload)


def test_reads_from_other_threads_allow_writes(tmp_path):
    # The agent's thread writes in transactions while other threads read its stats through the
    # same connection and the uplink deletes through a second one.
    import threading
    import time

    shared = EdgeStore(tmp_path / "edge.sqlite", durability="normal")
    uplink = EdgeStore(tmp_path / "edge.sqlite", durability="normal")
    deadline = time.monotonic() + 3
    errors: list[BaseException] = []
    written = [0]

    def run(step):
        try:
            while time.monotonic() < deadline:
                step()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever stopped a thread
            errors.append(exc)

    def write():
        shared.begin()
        shared.append([(1, 1, b"x" * 10)], max_bytes=10**9, overflow="drop_oldest")
        shared.set_meta("written", written[0] + 1)
        shared.commit()
        written[0] += 1

    threads = [
        threading.Thread(target=run, args=(write,)),
        threading.Thread(target=run, args=(lambda: (shared.totals(), shared.get_meta("written")),)),
        threading.Thread(target=run, args=(lambda: uplink.remove([uplink.max_seq()]),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert written[0] > 0
    assert shared.get_meta("written") == written[0]
    shared.close()
    uplink.close()
