"""The ``sparkiot`` commands of the edge and its sync: ``edge``, ``sync-service`` and ``fleet``."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from pathlib import Path


def _section(raw: dict, name: str) -> dict:
    # A section that is not a mapping is left for validation to report, with its field path.
    section = raw.get(name)
    return section if isinstance(section, dict) else {}


def cmd_edge(args) -> int:
    from sparkiot.config import read_yaml_mapping
    from sparkiot.edge.agent import EdgeAgent
    from sparkiot.edge.config import build_edge_config
    from sparkiot.ingest.broker import EmbeddedBroker

    raw = read_yaml_mapping(args.config, label="edge file") if args.config else {}
    for key, value in (("site", args.site), ("data_dir", args.data_dir)):
        if value is not None:
            raw[key] = value
    if args.upstream:
        raw["upstream"] = {**_section(raw, "upstream"), "broker": args.upstream}
    if args.local_broker:
        raw["local"] = {**_section(raw, "local"), "broker": args.local_broker}
    config = build_edge_config(raw, origin=args.config or "the command line")
    broker = None
    local_url = config.local.broker
    if local_url == "embedded":
        broker = EmbeddedBroker(port=args.local_port)
        try:
            broker.start()
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}; pass a free port with --local-port, or a running broker with --local-broker", file=sys.stderr)
            return 2
        local_url = broker.url
        # amqtt speaks MQTT 3.1.1 only.
        config = config.model_copy(update={"local": config.local.model_copy(update={"protocol": "3.1.1"})})
        print(f"embedded local broker on {local_url}; devices publish there")
    try:
        agent = EdgeAgent(config, local_url=local_url)
    except (OSError, sqlite3.DatabaseError) as exc:
        print(f"error: cannot open the agent's store in {config.data_dir}: {exc}; check data_dir", file=sys.stderr)
        if broker is not None:
            broker.stop()
        return 2
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.run()
    finally:
        if broker is not None:
            broker.stop()
    stats = agent.final_stats
    print(
        f"site {config.site}: {stats.get('readings', 0)} readings admitted, {stats.get('forwarded_readings', 0)} forwarded, "
        f"{stats['buffer_readings']} buffered, {stats.get('alerts_raised', 0)} alerts raised, "
        f"{stats.get('dead_letters', 0)} dead letters; state in {config.data_path / 'edge.sqlite'}"
    )
    return 0


def cmd_sync_service(args) -> int:
    from sparkiot.config import check_topic_name
    from sparkiot.edge.service import SyncService
    from sparkiot.ingest.mqtt_client import parse_broker_url
    from sparkiot.state.crdt_store import open_store

    try:
        parse_broker_url(args.broker)
        check_topic_name(args.topic_prefix, "--topic-prefix")
        store = open_store(args.store, default_path=Path(args.data_dir) / "state.sqlite")
    except (ValueError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    service = SyncService(store, args.broker, topic_prefix=args.topic_prefix, client_id=args.client_id)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    print(f"sync service: {args.broker} → {args.store or Path(args.data_dir) / 'state.sqlite'}")
    try:
        service.run()
    finally:
        store.close()
    print(json.dumps(dict(service.counters), sort_keys=True))
    return 0


def cmd_fleet(args) -> int:
    from sparkiot.state.crdt_store import FLEET, describe, open_store

    try:
        store = open_store(args.store, default_path=Path(args.data_dir) / "state.sqlite", must_exist=True)
    except (ValueError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.site == FLEET:
            args.site = None
        if args.site and args.site not in store.sites():
            print(f"error: no site {args.site!r} in the store; known sites: {', '.join(store.sites()) or 'none yet'}", file=sys.stderr)
            return 1
        if args.site:
            document = {"site": args.site, "versions": store.versions(args.site), "state": describe(store.site_state(args.site))}
        else:
            document = {"sites": {site: store.versions(site) for site in store.sites()}, "fleet": describe(store.fleet_state())}
    finally:
        store.close()
    print(json.dumps(document, indent=2, sort_keys=True))
    return 0


def add_edge_commands(commands) -> None:
    """Add the edge, sync-service and fleet sub-commands to an argparse sub-parser set."""
    edge = commands.add_parser("edge", help="run the edge agent of one gateway")
    edge.add_argument("--site", help="the gateway's site, overriding the file's site")
    edge.add_argument("--config", help="edge YAML file (see examples/edge.yaml); defaults apply without one")
    edge.add_argument("--data-dir", help="override the file's data_dir")
    edge.add_argument("--local-broker", help="local broker URL, overriding local.broker ('embedded' starts one)")
    edge.add_argument("--local-port", type=int, default=1883, help="port of an embedded local broker (default 1883)")
    edge.add_argument("--upstream", help="cloud broker URL, overriding upstream.broker ('none' forwards nothing)")
    edge.set_defaults(handler=cmd_edge)

    sync = commands.add_parser("sync-service", help="merge edge agents' CRDT deltas into the state store")
    sync.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="the cloud broker (default mqtt://127.0.0.1:1883)")
    sync.add_argument("--store", help="sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH or redis://HOST:PORT/DB (default DATA_DIR/state.sqlite)")
    sync.add_argument("--data-dir", default="sparkiot-data", help="the main job's data directory (default ./sparkiot-data)")
    sync.add_argument("--topic-prefix", default="sparkiot/sync", help="sync topics' prefix (default sparkiot/sync)")
    sync.add_argument("--client-id", default="sparkiot-sync-service", help="MQTT client id; its session keeps deltas sent while it is down")
    sync.set_defaults(handler=cmd_sync_service)

    fleet = commands.add_parser("fleet", help="print the merged CRDT state of the fleet or of one site")
    fleet.add_argument("--store", help="sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH or redis://HOST:PORT/DB (default DATA_DIR/state.sqlite)")
    fleet.add_argument("--data-dir", default="sparkiot-data", help="the main job's data directory (default ./sparkiot-data)")
    fleet.add_argument("--site", help="one site instead of the fleet ('*' is the fleet)")
    fleet.set_defaults(handler=cmd_fleet)
