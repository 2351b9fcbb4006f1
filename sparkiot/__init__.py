"""sparkiot: real-time IoT data processing from MQTT through a durable landing log into Spark."""

__version__ = "0.1.0"
