"""The one place a SparkSession is made: the spark backfill and the Spark offline store share it.

PySpark is imported lazily: the package works without the ``spark`` extra, and asking for Spark without it (or
without Java) fails with one line saying what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamscore.errors import StreamscoreError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["ARROW_BATCH_ROWS", "SparkUnavailable", "hadoop_path", "input_uri", "require_spark", "spark_session"]

# Rows per Arrow batch between the JVM and Python: Spark's default (10,000) spends more in per-batch overhead.
ARROW_BATCH_ROWS = 100_000


class SparkUnavailable(StreamscoreError):
    """Spark was asked for (the spark backfill, the Spark offline store), but PySpark or Java is missing."""


def require_spark(what: str = "the spark backfill", instead: str = "--engine duckdb") -> None:
    """Raise :class:`SparkUnavailable` (one line: what to install) unless PySpark and Java are there."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailable(
            f"{what} needs PySpark: pip install 'pyspark>=4,<5' (the spark extra, which make install installs), "
            f"or use {instead}"
        ) from None
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        raise SparkUnavailable(f"{what} needs Java 17 or 21: install a JRE or set JAVA_HOME")


def local_cores(master: str) -> int | None:
    """Cores of a ``local``, ``local[N]`` or ``local[*]`` master; None for a cluster."""
    if master == "local":
        return 1
    if master.startswith("local[") and master.endswith("]"):
        inner = master[len("local[") : -1].split(",")[0]  # local[N,maxFailures]
        if inner == "*":
            return os.cpu_count() or 1
        return int(inner) if inner.isdigit() else None
    return None


def spark_session(master: str = "local[*]") -> SparkSession:
    """A SparkSession on ``master`` (or the one already active in this process, whatever its master).

    No web UI, Arrow on, UTC. In local mode the Python workers run this interpreter (they import streamscore
    and numba) and shuffles use two partitions per core instead of Spark's 200. Anything else (memory,
    executors, a cluster's Python) comes from the usual Spark places: ``spark-defaults.conf``,
    ``PYSPARK_SUBMIT_ARGS``, ``PYSPARK_PYTHON``.
    """
    require_spark()
    from pyspark.sql import SparkSession

    builder: Any = SparkSession.builder.master(master).appName("streamscore")
    conf = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # stage bars on stderr would break our progress bar
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
        "spark.sql.session.timeZone": "UTC",
    }
    cores = local_cores(master)
    if cores is not None:
        # PySpark starts its workers with $PYSPARK_PYTHON, else `python3` from PATH: not this venv's.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        conf["spark.sql.shuffle.partitions"] = str(max(2, 2 * cores))
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        session: SparkSession = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: PySparkRuntimeError JAVA_GATEWAY_EXITED and the like
        raise SparkUnavailable(f"cannot start Spark ({master}): {exc}".splitlines()[0]) from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


def hadoop_path(path: Path) -> str:
    """An explicit ``file://`` path (a cluster's default filesystem may be HDFS). Not ``Path.as_uri()``: Hadoop
    takes its percent-escapes literally (``[`` would become a folder named ``%5B``)."""
    return f"file://{path.resolve()}"


def input_uri(location: Path | str) -> str:
    """What Spark reads: any ``scheme://`` URI (s3a, hdfs, gs) as given; a local file with Hadoop's glob
    characters escaped (Spark expands globs in read paths). A local file that is not there is a
    FileNotFoundError here, not a Spark analysis error later."""
    if isinstance(location, str) and "://" in location:
        return location
    path = Path(location)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    return re.sub(r"([{}\[\]*?\\])", r"\\\1", hadoop_path(path))
