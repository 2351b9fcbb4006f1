"""The ``sparkiot dashboard`` command: one pipeline's live dashboard and Prometheus metrics."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


# The shortest --interval, in seconds.
MIN_INTERVAL = 0.05


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds")
    if value < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"{text} is below the minimum of {MIN_INTERVAL:g} s between reads of the data directory; give {MIN_INTERVAL:g} or more"
        )
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535; 0 picks a free one)")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_view(args, *, data_dir=None, name=None):
    """Return the ``DataDirView`` that the dashboard flags describe."""
    from sparkiot.dashboard.view import DataDirView
    from sparkiot.serverless.metering import load_prices, platform

    prices = load_prices(args.prices)
    platform(prices, args.platform)
    return DataDirView(
        data_dir or args.data_dir, name=name, edge_dirs=tuple(args.edge_dir), stale_intervals=args.stale_intervals,
        site_offline_seconds=args.site_offline, platform=args.platform, prices=prices,
    )


def cmd_dashboard(args) -> int:
    from sparkiot.dashboard.app import create_app
    from sparkiot.dashboard.server import DashboardServer, bind

    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        print(f"error: --data-dir {data_dir} is a file, not a directory; pass the data directory of a pipeline run "
              "(the directory that contains its tables/, default ./sparkiot-data)", file=sys.stderr)
        return 2
    if not data_dir.is_dir():
        print(f"error: data directory {data_dir} not found; pass the --data-dir of a pipeline run (default ./sparkiot-data)",
              file=sys.stderr)
        return 2
    view = build_view(args)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"sparkiot dashboard of {data_dir}: http://{host}:{port}/ (metrics at /metrics); Ctrl-C stops", flush=True)
    server = DashboardServer(create_app(view, interval=args.interval, max_clients=args.max_clients))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn has shut down and raises Ctrl-C's signal again on its way out.
        pass
    return 0


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that shape a dashboard's view (shared with ``run`` and ``demo``)."""
    parser.add_argument("--edge-dir", action="append", default=[],
                        help="an edge agent's data directory on this machine, for its site's backlog (repeatable)")
    parser.add_argument("--stale-intervals", type=_positive, default=3.0,
                        help="reporting intervals without data after which a series is stale (default 3)")
    parser.add_argument("--site-offline", type=_positive, default=300.0,
                        help="seconds without a merged delta after which a site is offline (default 300)")
    parser.add_argument("--platform", default="emr_serverless",
                        help="price table platform for the cost shown (default emr_serverless)")
    parser.add_argument("--prices", help="a price table YAML replacing the shipped one")


def add_dashboard_commands(commands) -> None:
    dashboard = commands.add_parser("dashboard", help="serve the live dashboard and /metrics of a pipeline's data directory")
    dashboard.add_argument("--data-dir", default="sparkiot-data", help="the pipeline's data directory (default ./sparkiot-data)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=port_number, default=8050, help="port to listen on (default 8050; 0 picks a free one)")
    dashboard.add_argument("--interval", type=_interval, default=0.5,
                           help=f"seconds between reads of the data directory (default 0.5, at least {MIN_INTERVAL:g})")
    dashboard.add_argument("--max-clients", type=_count, default=200, help="open event streams at most (default 200)")
    add_dashboard_arguments(dashboard)
    dashboard.set_defaults(handler=cmd_dashboard)
