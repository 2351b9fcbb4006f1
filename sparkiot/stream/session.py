"""The Spark session: Java detection with a clear message, quiet logs, same Python for workers."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sparkiot.config import SparkConfig

log = logging.getLogger(__name__)

SUPPORTED_JAVA = (17, 21)
_LOG4J = Path(__file__).with_name("log4j2.properties")


class JavaNotFound(RuntimeError):
    """No usable Java runtime; the message names the version needed and how to install it."""


@dataclass(frozen=True)
class Java:
    executable: str
    major: int
    home: str


def _install_hint() -> str:
    system = platform.system()
    if system == "Darwin":
        return "install it with 'brew install openjdk@17' and set JAVA_HOME=$(/usr/libexec/java_home -v 17)"
    if system == "Windows":
        return "install it with 'winget install Microsoft.OpenJDK.17' and set JAVA_HOME to its folder"
    return (
        "install it with 'sudo apt-get install openjdk-17-jre-headless' (Debian, Ubuntu) or "
        "'sudo dnf install java-17-openjdk-headless' (Fedora, RHEL), or set JAVA_HOME to a Java 17 or 21 runtime"
    )


def find_java(environ: dict[str, str] | None = None) -> Java:
    """Return the Java runtime Spark will use: ``JAVA_HOME`` first, else ``java`` on PATH.

    Raises :class:`JavaNotFound` when neither exists or the version is not 17 or 21.
    """
    environ = os.environ if environ is None else environ
    java_home = environ.get("JAVA_HOME")
    if java_home:
        executable = str(Path(java_home) / "bin" / "java")
        origin = f"JAVA_HOME={java_home}"
        if not os.access(executable, os.X_OK):
            raise JavaNotFound(f"{origin} has no executable bin/java; point JAVA_HOME at a Java 17 or 21 runtime, or {_install_hint()}")
    else:
        executable = shutil.which("java", path=environ.get("PATH"))
        origin = "java on PATH"
        if executable is None:
            raise JavaNotFound(f"Spark needs Java 17 or 21 and none was found (JAVA_HOME is unset, no java on PATH); {_install_hint()}")

    try:
        output = subprocess.run([executable, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFound(f"{origin} ({executable}) failed to run: {exc}; {_install_hint()}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if not match:
        raise JavaNotFound(f"cannot read the version of {origin} ({executable}); {_install_hint()}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major not in SUPPORTED_JAVA:
        raise JavaNotFound(f"{origin} is Java {major}, but Spark 4.3 needs Java 17 or 21; {_install_hint()}")
    home = java_home or str(Path(os.path.realpath(executable)).parent.parent)
    return Java(executable, major, home)


def build_session(config: SparkConfig, *, app_name: str = "sparkiot", log_file: Path | None = None):
    """Start (or return the running) SparkSession configured by ``config``.

    Java is checked before Spark is touched, so a missing runtime gives a clear message instead
    of a launcher stack trace. Python workers run this same interpreter. With ``log_file``, the
    JVM's standard error (Spark's log and the JVM's own warnings) goes to that file instead of the
    terminal.
    """
    java = find_java()
    os.environ.setdefault("JAVA_HOME", java.home)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

    from pyspark.sql import SparkSession

    java_options = f"-Dlog4j2.configurationFile=file:{_LOG4J} -Dlog4j.sparkiot.level={config.log_level}"
    builder = (
        SparkSession.builder.appName(app_name)
        .master(config.master)
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Idle Python workers are forked again cheaply from Spark's daemon; keeping every one
        # that the streaming queries ever used costs about 75 MiB each.
        .config("spark.python.factory.idleWorkerMaxPoolSize", "2")
        # UTC-adjusted microsecond timestamps, which pandas and pyarrow read as zone-aware UTC.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    )
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    log.info("starting Spark (master %s, Java %d at %s)", config.master, java.major, java.home)
    spark = _start_quietly(builder, log_file)
    spark.sparkContext.setLogLevel(config.log_level)
    return spark


def _start_quietly(builder, log_file: Path | None):
    """Run ``builder.getOrCreate()``; the JVM it launches inherits ``log_file`` as its standard error."""
    if log_file is None:
        return builder.getOrCreate()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as target:
        os.dup2(target.fileno(), 2)
        try:
            return builder.getOrCreate()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def build_connect_session(url: str, config: SparkConfig, *, app_name: str = "sparkiot"):
    """Return a session on the Spark Connect server at ``url`` (``sc://HOST:PORT``) with sparkiot's SQL settings.

    The server owns the JVM; only the session-level settings that sparkiot needs are sent.
    """
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder.remote(url).appName(app_name)
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        "spark.sql.streaming.stateStore.providerClass":
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    settings.update({key: value for key, value in config.conf.items() if key.startswith("spark.sql.")})
    log.info("connecting to Spark Connect at %s", url)
    spark = builder.getOrCreate()
    for key, value in settings.items():
        spark.conf.set(key, value)
    return spark
