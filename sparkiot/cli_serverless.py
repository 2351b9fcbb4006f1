"""The ``sparkiot`` commands of the control plane: ``serve`` and its clients ``submit``, ``list``,
``status``, ``stop``, ``start``, ``delete``, ``logs``, ``scale`` and ``cost``."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("sparkiot")


def cmd_serve(args) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from sparkiot.dashboard.server import DashboardServer
    from sparkiot.serverless.api import create_app
    from sparkiot.serverless.control import AlreadyRunning, ControlPlane
    from sparkiot.serverless.settings import load_serve_config

    settings = load_serve_config(args.config, host=args.host, port=args.port, state_dir=args.state_dir,
                                 registry=args.registry, prices=args.prices)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the API is reachable beyond this machine; keep the token secret and use TLS in front", settings.host)
    problem = _port_problem(settings.host, settings.port)
    if problem:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {problem}; choose another --port", file=sys.stderr)
        return 2
    try:
        settings.resolved_token()
        control = ControlPlane(settings)
    except (AlreadyRunning, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, SQLAlchemyError) as exc:
        print(f"error: cannot open the state directory {settings.state_dir} or the registry {settings.registry_url}: "
              f"{str(exc).splitlines()[0]}; check the path, or that the database runs and the user may connect",
              file=sys.stderr)
        return 2
    control.start()
    if settings.token:
        source = "the configuration"
    elif settings.resolved_token():
        source = "$SPARKIOT_TOKEN"
    else:
        source = str(control.state_dir / "token")
    print(f"sparkiot control plane on http://{settings.host}:{settings.port} (token from {source}; "
          f"registry {settings.registry_url}; state in {control.state_dir})", flush=True)
    def on_shutdown() -> None:
        print("stopping: draining and stopping every pipeline; they resume when the control plane starts again", flush=True)
        control.shutdown(stop_pipelines=True)

    app = create_app(control, on_shutdown=on_shutdown)
    # Served dashboards hold event streams open; the server ends them first so Ctrl-C is not held up.
    DashboardServer(app, hub=app.state.dashboard_hub, host=settings.host, port=settings.port).run()
    return 0


def _finite(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
    return value


def _port_problem(host: str, port: int) -> str | None:
    """Return why ``host:port`` cannot be listened on, checked before any pipeline is touched."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return str(exc)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _client(args):
    from sparkiot.serverless.client import Client, find_token

    return Client(args.url, find_token(args.token, args.state_dir))


def _run(args, action) -> int:
    import signal

    from sparkiot.serverless.client import ClientError

    # Output piped to a command such as 'head' ends quietly when that command exits.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    client = _client(args)
    try:
        return action(client)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def cmd_submit(args) -> int:
    path = Path(args.config)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read pipeline file {path}: {exc}", file=sys.stderr)
        return 2

    def action(client) -> int:
        record = client.submit(text)
        print(f"submitted {record['name']} (runtime {record['runtime']}, data in {record['data_dir']}); "
              f"follow it with 'sparkiot status {record['name']}'")
        return 0

    return _run(args, action)


def cmd_list(args) -> int:
    def action(client) -> int:
        records = client.list()
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        if not records:
            print("no pipelines; submit one with 'sparkiot submit PIPELINE.yaml'")
            return 0
        print(f"{'NAME':24} {'STATE':16} {'RUNTIME':11} EPOCH  MESSAGE")
        for record in records:
            print(f"{record['name'][:24]:24} {record['state']:16} {record['runtime']:11} {record['epoch']:5}  {record['message'][:60]}")
        return 0

    return _run(args, action)


def format_status(status: dict) -> str:
    progress = status["progress"]
    lag = progress["watermark_lag"]
    lines = [
        f"{status['name']}: {status['state']} (wanted {status['desired']}), runtime {status['runtime']}, epoch {status['epoch']}",
        f"  input {progress['input_rate']:.1f}/s, processed {progress['process_rate']:.1f}/s, "
        f"last batch {progress['batch_duration']:.2f} s, trigger {progress['trigger']:g} s",
        f"  backlog {progress['backlog']} records, landed {progress['landed']} readings, "
        f"watermark lag {'-' if lag is None else f'{lag:.0f} s'}",
        f"  executors {status['executors']} (target {status['target_executors']})",
        "  cost so far: " + ", ".join(f"{key} ${value}" for key, value in status["cost"].items()),
    ]
    if status["message"]:
        lines.append(f"  message: {status['message']}")
    for start in status["starts"][-5:]:
        seconds = start["seconds"]
        lines.append(f"  start {start['epoch']} ({start['reason']}): "
                     + (f"first batch after {seconds:.1f} s" if seconds is not None else "no batch yet"))
    return "\n".join(lines)


def cmd_status(args) -> int:
    def action(client) -> int:
        status = client.status(args.name)
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        return 0

    return _run(args, action)


def cmd_stop(args) -> int:
    def action(client) -> int:
        record = client.stop(args.name)
        if not args.wait:
            print(f"{record['name']}: {record['state']}; the runtime drains what landed, then stops")
            return 0
        deadline = time.monotonic() + args.timeout
        while record["state"] != "stopped":
            if time.monotonic() > deadline:
                print(f"error: {args.name} is still {record['state']} after {args.timeout:g} s", file=sys.stderr)
                return 1
            time.sleep(0.5)
            record = client.status(args.name)
        print(f"{args.name}: stopped")
        return 0

    return _run(args, action)


def cmd_start(args) -> int:
    def action(client) -> int:
        record = client.start(args.name)
        print(f"{record['name']}: {record['state']}")
        return 0

    return _run(args, action)


def cmd_delete(args) -> int:
    def action(client) -> int:
        client.delete(args.name)
        print(f"deleted {args.name} from the registry; its data directory is kept")
        return 0

    return _run(args, action)


def cmd_logs(args) -> int:
    def action(client) -> int:
        for line in client.logs(args.name, args.source, args.lines)["lines"]:
            print(line)
        return 0

    return _run(args, action)


def cmd_scale(args) -> int:
    if args.auto and (args.executors is not None or args.trigger is not None):
        print("error: give --auto alone, or --executors and --trigger", file=sys.stderr)
        return 2
    if not args.auto and args.executors is None and args.trigger is None:
        print("error: give --executors N, --trigger SECONDS, both, or --auto", file=sys.stderr)
        return 2

    def action(client) -> int:
        if args.auto:
            client.scale(args.name, automatic=True)
            print(f"{args.name}: back to its configured scaling policy")
            return 0
        client.scale(args.name, args.executors, args.trigger)
        settings = []
        if args.executors is not None:
            settings.append(f"{args.executors} executors")
        if args.trigger is not None:
            settings.append(f"a {args.trigger:g} s trigger")
        print(f"{args.name}: {' and '.join(settings)} by hand, kept at every start until 'sparkiot scale {args.name} --auto'")
        return 0

    return _run(args, action)


def cmd_cost(args) -> int:
    def action(client) -> int:
        bill = client.cost(args.name, args.platform)
        if args.json:
            print(json.dumps(bill, indent=2))
            return 0
        print(f"pipeline {args.name} on {bill['title']} ({bill['region']})")
        print(f"  total: ${bill['total']} (exact {bill['exact']} USD)")
        print(f"  workers: {bill['workers']}; held {bill['held_seconds']:.1f} worker-seconds, "
              f"billed {bill['billed_seconds']} (increments and minimums applied)")
        for name, amount in bill["units"].items():
            print(f"  {name.replace('_', '-')}: {float(amount):.6f}")
        return 0

    return _run(args, action)


def add_serverless_commands(commands) -> None:
    """Add ``serve`` and its client commands to an argparse sub-parser set."""
    serve = commands.add_parser("serve", help="run the control plane: pipelines on demand, scaled, metered")
    serve.add_argument("--config", help="control plane YAML (see examples/serve.yaml); defaults apply without one")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8765)")
    serve.add_argument("--state-dir", help="registry, token and pipeline folders (default ./sparkiot-serve)")
    serve.add_argument("--registry", help="sqlite:///PATH or postgresql://USER@HOST/DB (default STATE_DIR/registry.sqlite)")
    serve.add_argument("--prices", help="price table replacing platforms of the built-in one")
    serve.set_defaults(handler=cmd_serve)

    def client_parser(name: str, help_text: str):
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument("--url", help="control plane URL (default $SPARKIOT_URL or http://127.0.0.1:8765)")
        parser.add_argument("--token", help="bearer token (default $SPARKIOT_TOKEN, else STATE_DIR/token)")
        parser.add_argument("--state-dir", default="sparkiot-serve", help="where to find a generated token (default ./sparkiot-serve)")
        return parser

    submit = client_parser("submit", "submit a pipeline file to the control plane")
    submit.add_argument("config", help="pipeline YAML file (see examples/serverless.yaml)")
    submit.set_defaults(handler=cmd_submit)

    listing = client_parser("list", "list the control plane's pipelines")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_list)

    status = client_parser("status", "show a pipeline's state, progress, executors and cost so far")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    stop = client_parser("stop", "stop a pipeline: the ingest stops, Spark drains what landed, then stops")
    stop.add_argument("name")
    stop.add_argument("--wait", action="store_true", help="return once the pipeline is stopped")
    stop.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits at most (default 300)")
    stop.set_defaults(handler=cmd_stop)

    for name, handler, help_text in (
        ("start", cmd_start, "start a stopped or failed pipeline again from its checkpoints"),
        ("delete", cmd_delete, "remove a stopped pipeline from the registry (its data directory stays)"),
    ):
        parser = client_parser(name, help_text)
        parser.add_argument("name")
        parser.set_defaults(handler=handler)

    logs = client_parser("logs", "print a pipeline's recent log lines")
    logs.add_argument("name")
    logs.add_argument("--source", choices=["events", "runner", "ingest", "spark"], default="events")
    logs.add_argument("--lines", type=int, default=100)
    logs.set_defaults(handler=cmd_logs)

    scale = client_parser("scale", "set a pipeline's executors or trigger by hand, or return it to its policy")
    scale.add_argument("name")
    scale.add_argument("--executors", type=int, help="executors to hold (standalone runtime)")
    scale.add_argument("--trigger", type=_finite, help="micro-batch trigger interval in seconds")
    scale.add_argument("--auto", action="store_true", help="drop the settings made by hand")
    scale.set_defaults(handler=cmd_scale)

    cost = client_parser("cost", "print a pipeline's bill on a serverless platform's prices")
    cost.add_argument("name")
    cost.add_argument("--platform", default="emr_serverless",
                      help="emr_serverless, dataproc_serverless or synapse (or a key of your price table)")
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.set_defaults(handler=cmd_cost)
