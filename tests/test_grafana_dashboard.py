"""The Grafana dashboard in grafana/sparkiot.json, checked against the metrics that /metrics exposes."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from itertools import combinations
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard_support import (
    alert_rows,
    dead_letter_rows,
    late_rows,
    reading_rows,
    window_rows,
    write_batch,
    write_side_file,
)
from sparkiot.dashboard.metrics import registry_for
from sparkiot.dashboard.view import DataDirView
from sparkiot.serverless.metering import load_prices
from sparkiot.state.crdt_store import SqliteCrdtStore

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "sparkiot.json"
T0 = 1_790_000_000.0
PIPELINE_FILTER = 'pipeline=~"$pipeline"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UNITS = {"s", "short", "reqps", "currencyUSD"}
GRID_COLUMNS = 24

METRIC_NAME = re.compile(r"\bsparkiot_[a-z_]+")
RATE_ARGUMENT = re.compile(r"\b(?:rate|irate|increase)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
RATE_CALL = re.compile(r"\b(?:rate|irate|increase)\(")
SELECTOR = re.compile(r"\b(sparkiot_[a-z_]+)(\{[^}]*\})?")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> dict[str, dict]:
    """Parse the /metrics text of one pipeline whose tables and side files give every family a sample."""
    data_dir = tmp_path_factory.mktemp("pipeline")
    now = time.time()

    write_batch(data_dir, "readings", 0, reading_rows([("d1", "temp", T0 + i, 20.0 + i, "north", now - 1) for i in range(4)]))
    write_batch(data_dir, "windows", 0, window_rows([("1h", "d1", "temp", T0, T0 + 3600, 4, 21.5, 20.0, 23.0)]))
    write_side_file(data_dir, "late", 0, 0, late_rows(2, T0))
    write_side_file(data_dir, "dead_letters", 0, 1, dead_letter_rows(["invalid_json", "non_numeric_value"], now))
    write_side_file(data_dir, "alerts", 0, 0, alert_rows([("a1", "d1", "temp", T0 + 3, 23.0, 5.0)]))
    (data_dir / "ingest_stats.json").write_text(json.dumps({"readings": 6}))

    watermark = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30))
    progress = {"query": "readings", "batch_id": 0, "batch_ms": 700, "input_rate": 12.5, "executors": 2,
                "watermark": watermark}
    (data_dir / "progress.jsonl").write_text(json.dumps(progress) + "\n")
    (data_dir / "job.json").write_text(json.dumps(
        {"started": now - 600, "master": "local[2]", "driver_cores": 2, "driver_memory_bytes": 1024**3}))

    SqliteCrdtStore(data_dir / "state.sqlite").close()
    with sqlite3.connect(data_dir / "state.sqlite") as db:
        db.execute("INSERT INTO sync_versions VALUES ('north', 'r1', 7, ?)", (int((now - 5) * 1e6),))
    edge = tmp_path_factory.mktemp("edge-north")
    (edge / "edge_stats.json").write_text(json.dumps({"site": "north", "buffer_readings": 42, "uplink_connected": True}))

    view = DataDirView(data_dir, name="plant", edge_dirs=(edge,), prices=load_prices(), platform="emr_serverless")
    view.poll()

    return parse_exposition(generate_latest(registry_for(lambda: [view])).decode())


def parse_exposition(text: str) -> dict[str, dict]:
    """Return ``{"families": {name: {type, samples}}, "samples": {name: {type, family, labels}}}`` of ``text``."""
    families: dict[str, dict] = {}
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {"type": family.type, "samples": len(family.samples)}
        for sample in family.samples:
            entry = samples.setdefault(sample.name, {"type": family.type, "family": family.name, "labels": set()})
            entry["labels"].update(sample.labels)
    return {"families": families, "samples": samples}


def panels_of(dashboard: dict) -> list[dict]:
    """Return every panel, including those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in panels_of(dashboard) if panel["type"] != "row"]


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in query_panels(dashboard) for target in panel["targets"]]


def exposed_series(exposition: dict) -> set[str]:
    """Return the names a query may select: counters' ``_total`` names, gauges' names and histograms' base names."""
    names = set()
    for name, entry in exposition["samples"].items():
        names.add(entry["family"] if entry["type"] == "histogram" else name)
    return names


def series_name(metric: str, exposition: dict) -> str:
    """Strip ``_bucket``, ``_count`` or ``_sum`` from ``metric`` when the rest names an exposed histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = metric.removesuffix(suffix)
        if base != metric and exposition["families"].get(base, {}).get("type") == "histogram":
            return base
    return metric


def rectangles_overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def test_dashboard_identity(dashboard):
    assert dashboard["title"] == "sparkiot"
    assert dashboard["uid"] == "sparkiot-pipelines"
    assert dashboard["tags"] == ["sparkiot"]
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["id"] is None


def test_panel_ids_unique(dashboard):
    ids = [panel["id"] for panel in panels_of(dashboard)]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    duplicates = sorted({panel_id for panel_id in ids if ids.count(panel_id) > 1})
    assert not duplicates, f"panel ids used more than once: {duplicates}"


def test_panels_fit_grid_without_overlap(dashboard):
    panels = panels_of(dashboard)
    for panel in panels:
        pos = panel["gridPos"]
        assert min(pos["x"], pos["y"]) >= 0, f"{panel['title']!r} starts outside the grid"
        assert min(pos["w"], pos["h"]) > 0, f"{panel['title']!r} has no area"
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, f"{panel['title']!r} is wider than the grid"

    for a, b in combinations(panels, 2):
        assert not rectangles_overlap(a["gridPos"], b["gridPos"]), f"{a['title']!r} overlaps {b['title']!r}"


def test_variables(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    pipeline = variables["pipeline"]
    assert pipeline["type"] == "query"
    assert pipeline["datasource"] == DATASOURCE
    assert pipeline["query"]["query"] == "label_values(sparkiot_readings_stored_total, pipeline)"
    assert pipeline["definition"] == pipeline["query"]["query"]
    assert pipeline["multi"] is True
    assert pipeline["includeAll"] is True


def test_panel_datasources_and_units(dashboard):
    for panel in query_panels(dashboard):
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]

        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']!r} repeats a refId"


def test_exposition_fixture_fills_every_family(exposition):
    empty = sorted(name for name, family in exposition["families"].items() if family["samples"] == 0)
    assert not empty, f"families without samples in the fixture, so the coverage checks miss them: {empty}"


def test_every_panel_metric_is_exposed(dashboard, exposition):
    series = exposed_series(exposition)
    for expr in expressions(dashboard):
        for metric in METRIC_NAME.findall(expr):
            assert series_name(metric, exposition) in series, f"{metric} in {expr!r} is not in the exposition"

    variable_query = next(v for v in dashboard["templating"]["list"] if v["name"] == "pipeline")["query"]["query"]
    for metric in METRIC_NAME.findall(variable_query):
        assert metric in series, f"the pipeline variable reads {metric}, which is not in the exposition"


def test_every_exposed_metric_has_a_panel(dashboard, exposition):
    used = {series_name(metric, exposition) for expr in expressions(dashboard) for metric in METRIC_NAME.findall(expr)}
    missing = sorted(set(exposed_series(exposition)) - used)
    assert not missing, f"metrics without a panel: {missing}"


def test_rate_only_on_counters_and_buckets(dashboard, exposition):
    for expr in expressions(dashboard):
        arguments = RATE_ARGUMENT.findall(expr)
        assert len(arguments) == len(RATE_CALL.findall(expr)), f"a rate in {expr!r} does not start with a metric name"
        for metric in arguments:
            entry = exposition["samples"].get(metric)
            assert entry is not None, f"rate over {metric}, which is not in the exposition"
            if metric.endswith("_bucket"):
                assert entry["type"] == "histogram", f"rate over {metric}, which is not a histogram's bucket"
            else:
                assert entry["type"] == "counter", f"rate over {metric}, which is not a counter"
                assert metric.endswith("_total"), f"rate over {metric}, which is not a counter's _total sample"


def test_every_selector_filters_pipeline(dashboard):
    for expr in expressions(dashboard):
        assert PIPELINE_FILTER in expr, expr
        for metric, matchers in SELECTOR.findall(expr):
            assert PIPELINE_FILTER in matchers, f"{metric} in {expr!r} does not filter on the pipeline variable"


def test_histogram_quantiles_keep_le(dashboard):
    for expr in expressions(dashboard):
        if "histogram_quantile(" not in expr:
            continue
        assert "_bucket" in expr, expr
        for grouping in GROUPING.findall(expr):
            assert "le" in [label.strip() for label in grouping.split(",")], f"{expr!r} aggregates away le"


def test_grouping_and_legend_labels_exist(dashboard, exposition):
    for expr in expressions(dashboard):
        assert "without" not in expr, f"{expr!r} uses without, which this test does not follow; group with by"

    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            labels = set()
            for metric in METRIC_NAME.findall(expr):
                assert metric in exposition["samples"], f"{metric} in {expr!r} is not a sample name of the exposition"
                labels |= exposition["samples"][metric]["labels"]
            groupings = [{label.strip() for label in grouping.split(",")} for grouping in GROUPING.findall(expr)]
            for grouping in groupings:
                assert grouping <= labels, f"{expr!r} groups by labels its metrics lack: {sorted(grouping - labels)}"

            # An aggregation keeps only the labels it groups by, so the legend may name only those.
            result_labels = set.intersection(labels, *groupings)
            legend = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
            dropped = sorted(legend - result_labels)
            assert not dropped, f"{panel['title']!r} legend names labels the query drops: {dropped}"


def test_expressions_balanced(dashboard):
    pairs = {")": "(", "}": "{", "]": "["}
    for expr in expressions(dashboard):
        stack = []
        for char in re.sub(r'"[^"]*"', '""', expr):
            if char in "({[":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], f"unbalanced {char!r} in {expr!r}"
        assert not stack, f"unclosed {stack} in {expr!r}"
