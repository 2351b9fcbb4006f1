"""The control plane's own configuration (``sparkiot serve --config SERVE.yaml``); every key has a default."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from sparkiot.config import Bytes, Seconds, _Section, read_yaml_mapping, validate_model

TOKEN_VARIABLE = "SPARKIOT_TOKEN"


class WorkerConfig(_Section):
    """One standalone worker: the cores and memory it offers to executors."""

    cores: int = Field(default=4, ge=1, le=1024)
    memory: Bytes = 3 * 1024**3


class ClusterConfig(_Section):
    """The standalone cluster the control plane starts on 127.0.0.1 for ``runtime: standalone`` pipelines."""

    workers: list[WorkerConfig] = Field(default=[WorkerConfig()], min_length=1, max_length=16)
    master_port: int | None = Field(default=None, ge=1024, le=65535, description="default: a free port")
    stop_when_idle: bool = Field(
        default=True, description="stop the cluster (and the Spark Connect server) while no pipeline runs on it"
    )


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    token: str | None = Field(
        default=None, min_length=16,
        description=f"bearer token; else ${TOKEN_VARIABLE}; else one is generated into STATE_DIR/token",
    )
    state_dir: str = "sparkiot-serve"
    registry: str | None = Field(default=None, description="sqlite:///PATH or postgresql://USER@HOST/DB; default STATE_DIR/registry.sqlite")
    prices: str | None = Field(default=None, description="a price table that replaces platforms of the built-in one")
    data_roots: list[str] = Field(
        default=[], description="folders where a pipeline's data_dir may be; default the state directory alone"
    )
    poll_interval: Seconds = 0.5
    drain_timeout: Seconds = Field(default=120.0, description="how long a stopping runtime may drain before it is killed")
    max_restarts: int = Field(default=3, ge=0, description="restarts of a failed runtime before the pipeline is marked failed")
    connect_port: int | None = Field(default=None, ge=1024, le=65535, description="Spark Connect port; default a free port")
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("host must be an address such as 127.0.0.1")
        return value

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def registry_url(self) -> str:
        return self.registry or f"sqlite:///{(self.state_path / 'registry.sqlite').resolve()}"

    def resolved_token(self) -> str | None:
        """Return the configured token, else ``$SPARKIOT_TOKEN``; raise ValueError when the variable's is too short."""
        if self.token:
            return self.token
        value = os.environ.get(TOKEN_VARIABLE)
        if value is not None and len(value) < 16:
            raise ValueError(f"${TOKEN_VARIABLE} has {len(value)} characters; a bearer token needs at least 16, "
                             "such as the output of 'python -c \"import secrets; print(secrets.token_urlsafe(32))\"'")
        return value or None


def load_serve_config(path: str | Path | None, **overrides: object) -> ServeConfig:
    raw = read_yaml_mapping(path, label="control plane configuration") if path else {}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return validate_model(ServeConfig, raw, origin=str(path or "defaults"), label="control plane configuration",
                          example="examples/serve.yaml")
