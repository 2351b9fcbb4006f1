"""Decode throughput of every codec beside the raw parser of its format, on the same bytes.

For each format the script builds one set of payloads (``--messages`` messages of
``--readings`` readings each, realistic field names and values), then times, in the same run
and on the same bytes:

* the sparkiot codec's ``decode`` (bytes to validated readings and dead letters);
* the raw parser alone, as the limit a codec built on it can approach: ``orjson.loads`` for JSON
  and SenML JSON (``json.loads`` beside it), ``cbor2.loads`` for SenML CBOR,
  ``Payload.FromString`` of the protobuf runtime for Sparkplug B, and for line protocol
  ``line_protocol_parser.parse_line`` where that package is installed, else a plain split of
  the text into lines and fields.

Each figure is the best of ``--repeat`` passes, in readings per second. Run it on a quiet
machine: ``python benchmarks/decode_throughput.py --json results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import cbor2

from sparkiot.codecs import build_codec
from sparkiot.codecs.sparkplug import sparkplug_b_pb2 as pb
from sparkiot.config import CodecConfig

BASE_S = 1_714_564_800


def best_rate(function, payloads: list, readings: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for payload in payloads:
            function(payload)
        best = min(best, time.perf_counter() - started)
    return readings / best


def json_payloads(messages: int, per_message: int) -> list[bytes]:
    return [
        json.dumps([
            {"device_id": f"dev-{m % 50}", "metric": "temperature", "ts": (BASE_S + m * per_message + i) * 1000,
             "value": 20.0 + (i % 17) * 0.25, "unit": "Cel"}
            for i in range(per_message)
        ]).encode()
        for m in range(messages)
    ]


def influx_payloads(messages: int, per_message: int) -> list[bytes]:
    return [
        "\n".join(
            f"env,host=dev-{m % 50},site=roof temperature={20.0 + (i % 17) * 0.25} {(BASE_S + m * per_message + i) * 10**9}"
            for i in range(per_message)
        ).encode()
        for m in range(messages)
    ]


def senml_records(m: int, per_message: int) -> list[dict]:
    records = [{"bn": f"dev-{m % 50}/", "bt": BASE_S + m * per_message, "bu": "Cel"}]
    records[0].update({"n": "temperature", "v": 20.0, "t": 0})
    records.extend({"n": "temperature", "v": 20.0 + (i % 17) * 0.25, "t": i} for i in range(1, per_message))
    return records


_CBOR_LABELS = {"bn": -2, "bt": -3, "bu": -4, "n": 0, "v": 2, "t": 6}


def senml_cbor_payloads(messages: int, per_message: int) -> list[bytes]:
    return [
        cbor2.dumps([{_CBOR_LABELS[key]: value for key, value in record.items()} for record in senml_records(m, per_message)])
        for m in range(messages)
    ]


def sparkplug_payloads(messages: int, per_message: int) -> tuple[bytes, list[bytes]]:
    birth = pb.Payload(timestamp=BASE_S * 1000, seq=0)
    birth.metrics.add(name="bdSeq", datatype=pb.Int64, long_value=0)
    for i in range(per_message):
        birth.metrics.add(name=f"Line/Sensor{i}", alias=i + 1, datatype=pb.Double, double_value=0.0)
    data = []
    for m in range(messages):
        payload = pb.Payload(timestamp=(BASE_S + m) * 1000, seq=(m + 1) % 256)
        for i in range(per_message):
            payload.metrics.add(alias=i + 1, datatype=pb.Double, double_value=20.0 + (i % 17) * 0.25,
                                timestamp=(BASE_S + m) * 1000)
        data.append(payload.SerializeToString())
    return birth.SerializeToString(), data


def influx_raw_parser():
    try:
        from line_protocol_parser import parse_line
    except ImportError:
        return "str.split (no line-protocol parser installed)", lambda payload: [
            line.split(" ") for line in payload.decode().split("\n")
        ]
    return "line_protocol_parser.parse_line", lambda payload: [
        parse_line(line) for line in payload.decode().split("\n")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per format (default 2000)")
    parser.add_argument("--readings", type=int, default=50, help="readings per message (default 50)")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best counts (default 5)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()

    try:
        import orjson
    except ImportError:
        raise SystemExit("orjson is needed for the JSON baseline: pip install orjson") from None

    received_us = (BASE_S + 10**7) * 1_000_000
    total = args.messages * args.readings
    config = CodecConfig(min_timestamp="2000-01-01T00:00:00Z", max_future="5m")
    rows = []

    def measure(name: str, codec_name: str, payloads: list[bytes], topic: str, raw_name: str, raw) -> None:
        codec = build_codec(codec_name, config)
        check = codec.decode(payloads[0], topic, received_us)
        assert len(check.readings) == args.readings, (name, len(check.readings))
        assert not check.dead_letters, (name, check.dead_letters[:1])
        codec_rate = best_rate(lambda payload: codec.decode(payload, topic, received_us), payloads, total, args.repeat)
        raw_rate = best_rate(raw, payloads, total, args.repeat)
        rows.append({"format": name, "codec_readings_per_s": round(codec_rate), "raw_parser": raw_name,
                     "raw_readings_per_s": round(raw_rate), "raw_over_codec": round(raw_rate / codec_rate, 2)})

    json_data = json_payloads(args.messages, args.readings)
    measure("json", "json", json_data, "sensors/lab", "orjson.loads", orjson.loads)
    rows.append({"format": "json", "codec_readings_per_s": rows[-1]["codec_readings_per_s"], "raw_parser": "json.loads",
                 "raw_readings_per_s": round(best_rate(json.loads, json_data, total, args.repeat)),
                 "raw_over_codec": None})
    rows[-1]["raw_over_codec"] = round(rows[-1]["raw_readings_per_s"] / rows[-1]["codec_readings_per_s"], 2)

    influx_name, influx_raw = influx_raw_parser()
    measure("influx", "influx", influx_payloads(args.messages, args.readings), "telegraf/roof", influx_name, influx_raw)

    senml_json = [json.dumps(senml_records(m, args.readings)).encode() for m in range(args.messages)]
    measure("senml", "senml", senml_json, "senml/field", "orjson.loads", orjson.loads)
    measure("senml-cbor", "senml-cbor", senml_cbor_payloads(args.messages, args.readings), "senml/field",
            "cbor2.loads", cbor2.loads)

    birth, data = sparkplug_payloads(args.messages, args.readings)
    codec = build_codec("sparkplug", config)
    codec.decode(birth, "spBv1.0/plant/NBIRTH/node-1", received_us)
    topic = "spBv1.0/plant/NDATA/node-1"
    check = codec.decode(data[0], topic, received_us)
    assert len(check.readings) == args.readings, len(check.readings)
    assert not check.dead_letters, check.dead_letters[:1]
    codec_rate = best_rate(lambda payload: codec.decode(payload, topic, received_us), data, total, args.repeat)
    raw_rate = best_rate(pb.Payload.FromString, data, total, args.repeat)
    rows.append({"format": "sparkplug", "codec_readings_per_s": round(codec_rate), "raw_parser": "Payload.FromString",
                 "raw_readings_per_s": round(raw_rate), "raw_over_codec": round(raw_rate / codec_rate, 2)})

    print(f"{args.messages} messages x {args.readings} readings per format, best of {args.repeat}; "
          f"Python {platform.python_version()}")
    print(f"{'format':<11} {'codec readings/s':>17} {'raw parser':<34} {'raw readings/s':>15} {'raw/codec':>9}")
    for row in rows:
        print(f"{row['format']:<11} {row['codec_readings_per_s']:>17,} {row['raw_parser']:<34} "
              f"{row['raw_readings_per_s']:>15,} {row['raw_over_codec']:>9}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"messages": args.messages, "readings_per_message": args.readings, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
