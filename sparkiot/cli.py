"""The ``sparkiot`` command: demo, run, ingest, replay and decode; the edge commands are in ``cli_edge``,
the control plane's in ``cli_serverless``."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from sparkiot.cli_dashboard import add_dashboard_arguments, build_view, port_number
from sparkiot.codecs import FORMATS
from sparkiot.config import ConfigError, PipelineConfig, build_config, load_config, parse_duration

log = logging.getLogger("sparkiot")


def _duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "amqtt", "transitions", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_summary(summary) -> int:
    ingest = summary.ingest
    print(f"\nran {summary.seconds:.0f} s; results in {summary.data_dir.resolve()}")
    print(
        f"  landed {ingest.get('readings', 0)} readings from {ingest.get('messages', 0)} messages; "
        f"late {ingest.get('late', 0)}, dead letters {ingest.get('dead_letters', 0)}, alerts {ingest.get('alerts', 0)}"
    )
    for reason, count in sorted(ingest.get("dead_letters_by_reason", {}).items()):
        print(f"    dead letters {reason}: {count}")
    print("  rows written: " + ", ".join(f"{name} {count}" for name, count in sorted(summary.output_rows.items())))
    print(f"  duplicates dropped by msg_id: {summary.duplicates_dropped}")
    print(f"  tables: {summary.data_dir / 'tables'}/{{readings,windows,alerts,late,dead_letters}} (Parquet)")
    print(f"  latest values: {summary.data_dir / 'state.sqlite'} (SQLite, table 'latest')")
    print(f"  logs: {summary.data_dir / 'logs'}")
    if summary.failure:
        print(f"error: {summary.failure}", file=sys.stderr)
        return 1
    return 0


# -- demo ---------------------------------------------------------------------------------------

DEMO_SERIES = (
    # (file in bokeh-sampledata's _data folder, device id, site)
    ("CGM.csv.gz", "cgm-1", "clinic"),
    ("sea_surface_temperature.csv.gz", "buoy-1", "harbour"),
)


def demo_series():
    """Load the demo's real series from the bokeh-sampledata package."""
    import bokeh_sampledata

    from sparkiot.ingest.replay import load_csv

    folder = Path(bokeh_sampledata.__file__).parent / "_data"
    return [load_csv(folder / name, device_id=device, site=site) for name, device, site in DEMO_SERIES]


def cmd_demo(args) -> int:
    from sparkiot.ingest.replay import Replayer
    from sparkiot.pipeline import Dashboard, Pipeline

    config = build_config(
        {
            "name": "demo",
            "data_dir": args.data_dir,
            "source": {"broker": "embedded", "topics": ["sensors/#"]},
            "codec": {"topic_pattern": "sensors/{site}/{device_id}"},
            "windows": [{"size": "1h"}, {"size": "6h", "slide": "1h"}],
            # Two series replayed side by side arrive up to a batch apart in event time.
            "watermark": "2h",
            # The demo's state is small; a 640 MiB heap keeps the whole demo under 2 GiB of RSS.
            # NOTE: measured on 60 s runs; a demo left running for hours was not measured.
            "spark": {"conf": {"spark.driver.memory": "640m"}},
        }
    )
    data_dir = Path(args.data_dir)
    previous = data_dir / "pipeline.json"
    if data_dir.exists() and any(data_dir.iterdir()):
        if previous.exists() and json.loads(previous.read_text()).get("name") == "demo":
            print(f"removing the results of the previous demo in {data_dir}")
            shutil.rmtree(data_dir)
        else:
            print(f"error: {data_dir} contains other data; give the demo an empty or new --data-dir", file=sys.stderr)
            return 2
    series = demo_series()
    duration = args.duration
    # Each series starts so that, at this speed, the replay reaches the present when the demo ends.
    span_us = int((duration or 3600) * args.speed * 1_000_000)
    start_us = time.time_ns() // 1000 - span_us
    series = [s.shifted(start_us) for s in series]
    replayer_box: dict = {}

    def start_replay(broker_url: str) -> None:
        # A message spans at most 20 rows and 0.02 s of replay (33 min of event time at 100000x),
        # well inside the 2 h watermark, so interleaved series do not make each other late.
        replayer = Replayer(series, broker_url, speed=args.speed, batch=20, linger=0.02, protocol="3.1.1", stop_at_present=True)
        replayer_box["replayer"] = replayer
        threading.Thread(target=replayer.run, name="replay", daemon=True).start()

    print(
        f"sparkiot demo: replaying real readings (glucose monitor, buoy sea temperature; {sum(len(s) for s in series)} in all) "
        f"at {args.speed:g}x through an embedded MQTT broker into Spark until the series end or the demo stops; Ctrl-C stops."
    )
    dashboard = None
    if not args.no_dashboard:
        dashboard = Dashboard(build_view(args, data_dir=config.data_path, name="demo"), port=args.dashboard_port,
                              any_port_if_busy=args.dashboard_port == 8050)
    pipeline = Pipeline(config, duration=duration, on_broker_ready=start_replay, dashboard=dashboard)
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop())
    try:
        summary = pipeline.run()
    finally:
        if "replayer" in replayer_box:
            replayer_box["replayer"].stop()
    return _print_summary(summary)


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from sparkiot.pipeline import Dashboard, Pipeline

    config = load_config(args.config, data_dir=args.data_dir)
    dashboard = None
    if args.dashboard_port is not None:
        dashboard = Dashboard(build_view(args, data_dir=config.data_path, name=config.name), port=args.dashboard_port)
    pipeline = Pipeline(config, duration=args.duration, view=not args.quiet, dashboard=dashboard)
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop())
    return _print_summary(pipeline.run())


# -- ingest -------------------------------------------------------------------------------------


def cmd_ingest(args) -> int:
    from sparkiot.ingest.consumer import Ingest

    config = load_config(args.config, data_dir=args.data_dir)
    broker = args.broker or config.source.broker
    if broker == "embedded":
        print("error: 'sparkiot ingest' needs a broker URL; pass --broker mqtt://HOST:PORT", file=sys.stderr)
        return 2
    ingest = Ingest(config, broker)
    signal.signal(signal.SIGTERM, lambda *_: ingest.stop())
    signal.signal(signal.SIGINT, lambda *_: ingest.stop())
    ingest.run()
    return 0


# -- replay -------------------------------------------------------------------------------------


def cmd_replay(args) -> int:
    from sparkiot.codecs.timestamps import iso_to_us
    from sparkiot.ingest.replay import Replayer, load_csv

    problem = _replay_argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    columns = args.columns.split(",") if args.columns else None
    series = []
    for path in args.files:
        try:
            loaded = load_csv(
                path, device_id=args.device if len(args.files) == 1 else None, site=args.site,
                time_column=args.time_column, columns=columns, metric=args.metric, timezone=args.timezone,
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.start:
            loaded = loaded.shifted(time.time_ns() // 1000 if args.start == "now" else iso_to_us(args.start, "UTC"))
        series.append(loaded)
    replayer = Replayer(
        series, args.broker, speed=args.speed, batch=args.batch, topic_template=args.topic,
        protocol=args.protocol, limit=args.limit, linger=args.linger,
    )
    signal.signal(signal.SIGTERM, lambda *_: replayer.stop())
    try:
        sent = replayer.run()
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        replayer.stop()
        sent = replayer.published_rows
    print(f"published {sent} rows in {replayer.published_messages} messages")
    return 0


def _replay_argument_problem(args) -> str | None:
    """Return what is wrong with the replay flags, or None."""
    import math
    from zoneinfo import ZoneInfo

    from sparkiot.codecs.timestamps import TimestampError, iso_to_us
    from sparkiot.ingest.mqtt_client import parse_broker_url

    try:
        parse_broker_url(args.broker)
    except ValueError as exc:
        return str(exc)
    if not math.isfinite(args.speed) or args.speed < 0:
        return f"--speed {args.speed} must be 0 (as fast as possible) or a positive number"
    if args.batch < 1:
        return f"--batch {args.batch} must be at least 1"
    if args.limit is not None and args.limit < 1:
        return f"--limit {args.limit} must be at least 1"
    if args.linger < 0:
        return f"--linger {args.linger} must not be negative"
    try:
        topic = args.topic.format(site="site", device_id="device")
    except (KeyError, IndexError, ValueError):
        return f"--topic {args.topic!r} may use only {{site}} and {{device_id}}, such as 'sensors/{{site}}/{{device_id}}'"
    if not topic or "+" in topic or "#" in topic:
        return f"--topic {args.topic!r} must be a non-empty topic name without wildcards"
    try:
        ZoneInfo(args.timezone)
    except (ValueError, OSError, KeyError):
        return f"--timezone {args.timezone!r} is not a known time zone; use an IANA name such as 'Europe/Berlin'"
    if args.start and args.start != "now":
        try:
            iso_to_us(args.start, "UTC")
        except TimestampError as exc:
            return f"--start: {exc}"
    return None


# -- decode -------------------------------------------------------------------------------------


def cmd_decode(args) -> int:
    from sparkiot.codecs import build_codec
    from sparkiot.codecs.timestamps import us_to_iso

    config = load_config(args.config) if args.config else PipelineConfig()
    codec_config = config.codec
    if args.topic_pattern:
        codec_config = build_config({"codec": {**codec_config.model_dump(mode="json"), "topic_pattern": args.topic_pattern}}).codec
    codec = build_codec(args.format, codec_config, dead_letter_raw_bytes=config.landing.dead_letter_raw_bytes)
    payload = sys.stdin.buffer.read()
    decoded = codec.decode(payload, args.topic, time.time_ns() // 1000)
    for reading in decoded.readings:
        document = reading._asdict()
        document["ts"] = us_to_iso(document.pop("ts_us"))
        document["ingest_ts"] = us_to_iso(document.pop("ingest_us"))
        print(json.dumps(document))
    for letter in decoded.dead_letters:
        print(json.dumps({"dead_letter": letter.reason, "detail": letter.detail, "source": letter.source}))
    return 1 if decoded.dead_letters else 0


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkiot", description="Real-time IoT data processing on Spark.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="replay real sensor data through an embedded broker into Spark")
    demo.add_argument("--duration", type=_duration, default=60.0, help="seconds to run, Spark's start-up included (default 60; 0 runs until Ctrl-C)")
    demo.add_argument("--data-dir", default="sparkiot-data", help="where tables, state and logs go (default ./sparkiot-data)")
    demo.add_argument("--speed", type=float, default=100000.0, help="replay speed-up over real time (default 100000)")
    demo.add_argument("--dashboard-port", type=port_number, default=8050,
                      help="port of the live dashboard on 127.0.0.1 (default 8050, else a free one; 0 picks a free one)")
    demo.add_argument("--no-dashboard", action="store_true", help="run without the dashboard")
    add_dashboard_arguments(demo)
    demo.set_defaults(handler=cmd_demo)

    run = commands.add_parser("run", help="run a pipeline file")
    run.add_argument("config", help="pipeline YAML file (see examples/pipeline.yaml)")
    run.add_argument("--duration", type=_duration, default=None, help="seconds to run, Spark's start-up included (default: until Ctrl-C)")
    run.add_argument("--data-dir", default=None, help="override the file's data_dir")
    run.add_argument("--quiet", action="store_true", help="no live status line")
    run.add_argument("--dashboard-port", type=port_number, default=None,
                     help="serve the live dashboard and /metrics on 127.0.0.1:PORT while the pipeline runs (0 picks a free port)")
    add_dashboard_arguments(run)
    run.set_defaults(handler=cmd_run)

    ingest = commands.add_parser("ingest", help="run only the MQTT ingest into the landing logs")
    ingest.add_argument("config", help="pipeline YAML or JSON file")
    ingest.add_argument("--broker", help="broker URL, overriding source.broker")
    ingest.add_argument("--data-dir", default=None, help="override the file's data_dir")
    ingest.set_defaults(handler=cmd_ingest)

    replay = commands.add_parser("replay", help="publish CSV time series over MQTT at a speed-up")
    replay.add_argument("files", nargs="+", help="CSV files, plain or .gz; one device each")
    replay.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default mqtt://127.0.0.1:1883)")
    replay.add_argument("--speed", type=float, default=1000.0, help="speed-up over real time; 0 sends as fast as possible")
    replay.add_argument("--batch", type=int, default=50, help="rows per message at most (default 50)")
    replay.add_argument("--device", help="device id (one file only; default: the file name)")
    replay.add_argument("--site", help="site of every series")
    replay.add_argument("--time-column", help="time column (default: the first named like time or date)")
    replay.add_argument("--columns", help="comma-separated value columns (default: every numeric column)")
    replay.add_argument("--metric", help="metric name for a single value column")
    replay.add_argument("--timezone", default="UTC", help="zone of times written without one (default UTC)")
    replay.add_argument("--start", help="shift each series to start at this ISO 8601 time, or 'now'")
    replay.add_argument("--topic", default="sensors/{site}/{device_id}", help="topic template (default sensors/{site}/{device_id})")
    replay.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default 5)")
    replay.add_argument("--limit", type=int, help="send only the first N rows")
    replay.add_argument("--linger", type=float, default=0.1, help="seconds a row may wait for its message to fill (default 0.1)")
    replay.set_defaults(handler=cmd_replay)

    decode = commands.add_parser("decode", help="print the readings a payload on stdin becomes")
    decode.add_argument("--format", default="json", choices=FORMATS, help="payload format (default json)")
    decode.add_argument("--topic", default="sensors/unknown", help="topic the payload arrived on")
    decode.add_argument("--topic-pattern", help="names topic segments, such as sensors/{site}/{device_id}/{metric}")
    decode.add_argument("--config", help="pipeline file whose codec settings to use")
    decode.set_defaults(handler=cmd_decode)

    from sparkiot.cli_edge import add_edge_commands

    add_edge_commands(commands)

    from sparkiot.cli_dashboard import add_dashboard_commands
    from sparkiot.cli_serverless import add_serverless_commands

    add_serverless_commands(commands)
    add_dashboard_commands(commands)

    from sparkiot.cli_optimize import add_optimize_commands

    add_optimize_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if getattr(args, "duration", None) == 0:
        args.duration = None
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the Java check and other start-up failures carry a message for the user
        from sparkiot.stream.session import JavaNotFound

        if isinstance(exc, JavaNotFound):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
