"""The Prometheus exposition of one or more pipelines' dashboards.

Every metric carries a ``pipeline`` label. The counters are the dashboard's table counts, so
each equals the rows of its table at the last poll. A restarted dashboard counts the tables
again, so its counters resume from the tables' sizes, not from zero. The exception is
``sparkiot_readings_received_total``, the ingest's own counter, which restarts from zero with
the ingest, as a Prometheus counter of a restarted process does.

| metric | type | what |
|---|---|---|
| ``sparkiot_readings_received_total`` | counter | readings the ingest landed on time since it last started |
| ``sparkiot_readings_stored_total`` | counter | rows of ``tables/readings`` |
| ``sparkiot_windows_written_total`` | counter | rows of ``tables/windows`` |
| ``sparkiot_alerts_total`` | counter | rows of ``tables/alerts`` |
| ``sparkiot_late_readings_total`` | counter | rows of ``tables/late`` |
| ``sparkiot_dead_letters_total{reason}`` | counter | rows of ``tables/dead_letters`` per reason code |
| ``sparkiot_batches_total{query}`` | counter | micro-batches per query |
| ``sparkiot_batch_duration_seconds{query}`` | histogram | micro-batch durations from Spark's progress reports |
| ``sparkiot_end_to_end_latency_seconds`` | histogram | stored time minus ``ingest_ts``, per stored reading |
| ``sparkiot_watermark_lag_seconds`` | gauge | now minus the readings query's watermark |
| ``sparkiot_input_rows_per_second`` | gauge | the readings query's input rate in its last batch |
| ``sparkiot_executors`` | gauge | executors held, the driver not counted |
| ``sparkiot_cost_usd_total{platform}`` | counter | cost so far, priced at the platform's rates |
| ``sparkiot_devices`` / ``sparkiot_stale_series`` | gauge | devices seen; series silent for too long |
| ``sparkiot_edge_sync_lag_seconds{site}`` | gauge | now minus the site's last merged delta |
| ``sparkiot_edge_backlog_readings{site}`` | gauge | readings buffered at the site's edge agent |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from sparkiot.dashboard.view import DataDirView


class DashboardCollector(Collector):
    """Expose the views that ``views()`` returns at each scrape."""

    def __init__(self, views: Callable[[], Iterable[DataDirView]]) -> None:
        self.views = views

    def collect(self):
        counters = {
            "readings_received": CounterMetricFamily(
                "sparkiot_readings_received", "Readings the ingest landed on time since it last started.",
                labels=["pipeline"]),
            "readings": CounterMetricFamily("sparkiot_readings_stored", "Rows of the readings table.", labels=["pipeline"]),
            "windows": CounterMetricFamily("sparkiot_windows_written", "Rows of the windows table.", labels=["pipeline"]),
            "alerts": CounterMetricFamily("sparkiot_alerts", "Rows of the alerts table.", labels=["pipeline"]),
            "late": CounterMetricFamily("sparkiot_late_readings", "Rows of the late table.", labels=["pipeline"]),
        }

        dead = CounterMetricFamily("sparkiot_dead_letters", "Rows of the dead-letter table per reason code.",
                                   labels=["pipeline", "reason"])
        batches = CounterMetricFamily("sparkiot_batches", "Micro-batches run per query.", labels=["pipeline", "query"])
        durations = HistogramMetricFamily("sparkiot_batch_duration_seconds", "Micro-batch durations from Spark's progress.",
                                          labels=["pipeline", "query"])
        latency = HistogramMetricFamily("sparkiot_end_to_end_latency_seconds",
                                        "Time from receipt by the ingest to the stored table, per reading.", labels=["pipeline"])
        watermark = GaugeMetricFamily("sparkiot_watermark_lag_seconds", "Now minus the readings query's watermark.",
                                      labels=["pipeline"])
        input_rate = GaugeMetricFamily("sparkiot_input_rows_per_second", "The readings query's input rate in its last batch.",
                                       labels=["pipeline"])
        executors = GaugeMetricFamily("sparkiot_executors", "Executors held, the driver not counted.", labels=["pipeline"])
        cost = CounterMetricFamily("sparkiot_cost_usd", "Cost so far at each platform's rates, in US dollars.",
                                   labels=["pipeline", "platform"])
        devices = GaugeMetricFamily("sparkiot_devices", "Devices with at least one stored reading.", labels=["pipeline"])
        stale = GaugeMetricFamily("sparkiot_stale_series", "Series silent for longer than their stale limit.", labels=["pipeline"])
        sync_lag = GaugeMetricFamily("sparkiot_edge_sync_lag_seconds", "Now minus the site's last merged delta.",
                                     labels=["pipeline", "site"])
        backlog = GaugeMetricFamily("sparkiot_edge_backlog_readings", "Readings buffered at the site's edge agent.",
                                    labels=["pipeline", "site"])

        now = time.time()
        for view in self.views():
            with view.lock:
                name = view.name
                health = view.health()
                _add_if_number(counters["readings_received"], [name], view.readings_received)
                for key in ("readings", "windows", "alerts", "late"):
                    counters[key].add_metric([name], view.counts[key])
                for reason, count in sorted(view.dead_letters_by_reason.items()):
                    dead.add_metric([name, reason], count)
                for query, count in sorted(view.batches.items()):
                    batches.add_metric([name, query], count)
                for query, buckets in sorted(view.batch_durations.items()):
                    durations.add_metric([name, query], buckets.cumulative(), buckets.sum)
                latency.add_metric([name], view.latency.cumulative(), view.latency.sum)
                sites = view.sites()

            _add_if_number(watermark, [name], health.get("watermark_lag_seconds"))
            _add_if_number(input_rate, [name], health.get("input_rate"))
            _add_if_number(executors, [name], health.get("executors"))
            for platform, amount in sorted(health.get("cost_usd", {}).items()):
                cost.add_metric([name, platform], float(amount))
            devices.add_metric([name], health.get("devices", 0))
            stale.add_metric([name], health.get("stale_series", 0))

            for site in sites:
                if site["last_sync"] is not None:
                    sync_lag.add_metric([name, site["site"]], max(0.0, now - site["last_sync"]))
                _add_if_number(backlog, [name, site["site"]], site["backlog_readings"])

        yield from counters.values()
        yield from (dead, batches, durations, latency, watermark, input_rate, executors, cost, devices, stale, sync_lag, backlog)


def _add_if_number(family, labels: list[str], value) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        family.add_metric(labels, value)


def registry_for(views: Callable[[], Iterable[DataDirView]]) -> CollectorRegistry:
    """Return a registry that holds only the dashboard's metrics (no process or platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DashboardCollector(views))
    return registry
