"""The ingest's landing step without a broker: readings whose text cannot be stored."""

from __future__ import annotations

from types import SimpleNamespace

from sparkiot.codecs.json import Decoded
from sparkiot.config import build_config
from sparkiot.ingest.consumer import Ingest, landing_dir
from sparkiot.ingest.landing import LogReader
from sparkiot.readings import Reading


class RecordingClient:
    """Stands in for the paho client, which needs a broker; records acknowledgements."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def publish(self, *args, **kwargs) -> None:
        pass


def landed(config, log_name: str) -> list[dict]:
    reader = LogReader(landing_dir(config, log_name))
    return [row for batch in reader.read(0, reader.end_offset()) for row in batch.to_pylist()]


def test_unstorable_reading_isolated(tmp_path):
    config = build_config({"data_dir": str(tmp_path)})
    ingest = Ingest(config, "mqtt://127.0.0.1:1883")
    client = RecordingClient()
    ingest._client = client
    good = Reading("d1", "temp", 1_700_000_000_000_000, 1.0, None, None, "a", 1, "t")
    # A site no UTF-8 text can hold, as a codec without text checks could pass on.
    bad = Reading("d1", "temp", 1_700_000_000_000_001, 2.0, None, "\ud800", "b", 1, "t")
    ingest.codec = SimpleNamespace(
        decode=lambda *args: Decoded([good, bad], []), take_events=list, take_commands=list, counters=dict
    )

    ingest.land([SimpleNamespace(payload=b"x", topic="t", retain=False, qos=1, mid=7)])

    assert [row["value"] for row in landed(config, "readings")] == [1.0]
    assert [row["reason"] for row in landed(config, "dead_letters")] == ["invalid_field"]
    assert client.acks == [7]
