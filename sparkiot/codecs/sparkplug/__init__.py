"""Sparkplug B (Eclipse Sparkplug 3.0) payloads to readings: see :mod:`sparkiot.codecs.sparkplug.codec`.

``sparkplug_b.proto`` is the payload schema and ``sparkplug_b_pb2.py`` is generated from it; never
edit the generated file. To regenerate it, install grpcio-tools (a development tool only, not a
runtime dependency) and run from the repository root::

    python -m grpc_tools.protoc -I . --python_out=. sparkiot/codecs/sparkplug/sparkplug_b.proto

The generated code checks the protobuf runtime on import: grpcio-tools 1.85.1 (libprotoc 35.1)
emits gencode 7.35.1, which needs ``protobuf>=7.35.1,<8``. Regenerating with another grpcio-tools
changes that bound.
"""

from sparkiot.codecs.sparkplug.codec import SparkplugCodec, parse_topic, rebirth_request

__all__ = ["SparkplugCodec", "parse_topic", "rebirth_request"]
