"""The scaling interface's policies, and the registry's cost ledger on SQLite and on PostgreSQL."""

from __future__ import annotations

import sys
import textwrap

import pytest

from sparkiot.config import ConfigError, ServerlessConfig
from sparkiot.serverless.metering import load_prices, price
from sparkiot.serverless.registry import Conflict, Registry
from sparkiot.serverless.scaling import FixedPolicy, Metrics, TargetTracking, load_policy

POSTGRES_URL = "postgresql://root@127.0.0.1:5432/test"


def metrics(t: float, *, batch: float, executors: int, trigger: float = 1.0, backlog: int = 0, rate: float = 100.0) -> Metrics:
    return Metrics(time=t, input_rate=rate, process_rate=rate, batch_duration=batch, trigger=trigger, backlog=backlog,
                   watermark_lag=None, executors=executors, target_executors=executors, cores_per_executor=1)


def config(**scaling) -> ServerlessConfig:
    return ServerlessConfig(max_executors=8, scaling={"target_utilization": 0.5, "scale_out_cooldown": "10s",
                                                      "scale_in_cooldown": "30s", **scaling})


def test_target_tracking_scale_out_cooldown():
    policy = TargetTracking(config())
    # Busy 90% of each 1 s trigger on 2 executors, aiming at 50%: ceil(2 * 0.9 / 0.5) = 4.
    decision = policy.decide(metrics(100.0, batch=0.9, executors=2))
    assert decision.executors == 4
    assert "0.90" in decision.reason
    assert policy.decide(metrics(105.0, batch=0.9, executors=4)) is None
    assert policy.decide(metrics(110.0, batch=0.9, executors=4)).executors == 8


def test_target_tracking_scale_in_stepwise():
    policy = TargetTracking(config())
    assert policy.decide(metrics(0.0, batch=0.1, executors=4)).executors == 3
    assert policy.decide(metrics(20.0, batch=0.1, executors=3)) is None
    assert policy.decide(metrics(30.0, batch=0.1, executors=3)).executors == 2
    # Within the band: ceil(2 * 0.45 / 0.5) = 2.
    assert policy.decide(metrics(100.0, batch=0.45, executors=2)) is None


def test_target_tracking_backlog_counts_as_full():
    policy = TargetTracking(config())
    decision = policy.decide(metrics(0.0, batch=0.2, executors=2, backlog=5000, rate=1000.0))
    assert decision.executors == 4


def test_fixed_policy_restores_size():
    policy = FixedPolicy(ServerlessConfig(initial_executors=2, max_executors=4))
    assert policy.decide(metrics(0.0, batch=5.0, executors=2)) is None
    assert policy.decide(metrics(0.0, batch=5.0, executors=3)).executors == 2


def test_custom_policy_loaded_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_policies.py").write_text(textwrap.dedent("""
        from sparkiot.serverless.scaling import Decision

        class Double:
            def __init__(self, config):
                self.limit = int(config.scaling.options["limit"])

            def decide(self, metrics):
                return Decision(executors=min(metrics.target_executors * 2, self.limit), reason="double")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = load_policy(ServerlessConfig(scaling={"policy": "my_policies:Double", "options": {"limit": 3}}))
    assert policy.decide(metrics(0.0, batch=0.1, executors=2)).executors == 3
    sys.modules.pop("my_policies", None)


@pytest.mark.parametrize("name, words", [("nowhere_module:X", "cannot import nowhere_module"),
                                         ("sparkiot.serverless.scaling:Nope", "has no Nope"),
                                         ("sparkiot.serverless.scaling:Metrics", "Metrics(config) failed")])
def test_policy_load_failure_named(name, words):
    with pytest.raises(ConfigError) as error:
        load_policy(ServerlessConfig(scaling={"policy": name}))
    assert words in str(error.value)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path, unique):
    if request.param == "sqlite":
        store = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
        yield store, "p"
        store.close()
        return
    try:
        store = Registry(POSTGRES_URL)
    except Exception as exc:  # noqa: BLE001 - reported with the start command
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}); start it with "
                    "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' (.ci/run does this)")
    name = f"p-{unique}"
    yield store, name
    store.delete(name)
    store.close()


def test_ledger_replay_idempotent_and_priced(registry):
    store, name = registry
    store.create(name, "name: p", {"name": name, "serverless": {"runtime": "standalone"}}, f"/tmp/{name}")
    with pytest.raises(Conflict):
        store.create(name, "name: p", {}, "/tmp/other")
    lines = [
        {"event": "start", "epoch": 1, "kind": "driver", "id": "driver", "cores": 1, "memory_mib": 1408, "time": 100.0},
        {"event": "start", "epoch": 1, "kind": "executor", "id": "executor-0", "cores": 1, "memory_mib": 896, "time": 105.0},
        {"event": "stop", "epoch": 1, "kind": "executor", "id": "executor-0", "time": 135.0},
        {"event": "start", "epoch": 1, "kind": "executor", "id": "executor-1", "cores": 1, "memory_mib": 896, "time": 110.0},
    ]
    store.apply_ledger(name, lines, 400)
    # A control plane that restarts before recording its offset reads the same lines again.
    store.apply_ledger(name, lines, 400)
    assert store.get(name)["ledger_offset"] == 400
    assert store.close_holdings(name, 1, 250.0) == 2
    holdings = sorted(store.holdings(name, now=1000.0), key=lambda h: h.resource_id)
    assert [(h.resource_id, h.start, h.end) for h in holdings] == [
        ("1/driver", 100.0, 250.0), ("1/executor-0", 105.0, 135.0), ("1/executor-1", 110.0, 250.0)]
    bill = price(holdings, load_prices(), "emr_serverless")
    # 150 s, 30 s raised to 60 s, 140 s.
    assert sorted(line.billed_seconds for line in bill.lines) == [60, 140, 150]


def test_starts_record_ready_and_first_batch(registry):
    store, name = registry
    store.create(name, "name: p", {"name": name}, f"/tmp/{name}")
    store.record_start(name, 1, "submit", 10.0)
    store.finish_start(name, 1, 14.0, None)
    store.finish_start(name, 1, 14.0, 17.5)
    store.finish_start(name, 1, 14.0, 99.0)
    [start] = store.starts(name)
    assert (start["ready_seconds"], start["seconds"], start["reason"]) == (4.0, 7.5, "submit")
