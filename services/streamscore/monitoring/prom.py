"""A small client for the Prometheus HTTP API: what `streamscore top` and `streamscore report` read.

Only the three calls they need (an instant query, a range query, readiness) plus the span of data the server
holds. Every failure becomes one :class:`PrometheusError` line the CLI prints without a traceback: an
unreachable server says how to start one, a rejected query quotes Prometheus's own reason.

Values come back as floats exactly as Prometheus's JSON spells them (``"NaN"``, ``"+Inf"`` included): a
``histogram_quantile`` over a window without traffic is NaN, and callers decide what "no data" looks like.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from streamscore.errors import StreamscoreError
from streamscore.settings import Settings

__all__ = [
    "BadQuery",
    "Prometheus",
    "PrometheusError",
    "PrometheusUnavailable",
    "Sample",
    "Series",
    "duration",
]


class PrometheusError(StreamscoreError):
    """Prometheus answered in a way we cannot use (or not at all); the message is one line."""


class PrometheusUnavailable(PrometheusError):
    """Nothing answers at the configured URL, or it is not ready yet."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"cannot reach Prometheus at {url}: {detail}; is it running? (`streamscore stack up` starts one)"
        )


class BadQuery(PrometheusError):
    """Prometheus rejected a query (a PromQL syntax or type error, a range too fine)."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant query: its labels and its value at the query time."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range query: timestamps (UTC) and the values at them, same length."""

    labels: dict[str, str]
    times: list[datetime]
    values: list[float]


def duration(seconds: float) -> str:
    """A PromQL duration; milliseconds, so a 1.5 s scrape interval is not rounded away.

    >>> duration(30), duration(1.5)
    ('30000ms', '1500ms')
    """
    return f"{max(1, round(seconds * 1000))}ms"


def _moment(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


class Prometheus:
    """A client for one Prometheus server; use it as a context manager (it holds a connection pool).

    >>> with Prometheus("http://127.0.0.1:9090") as prom:
    ...     prom.url
    'http://127.0.0.1:9090'
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float = 5.0) -> Prometheus:
        return cls(settings.monitoring.prometheus_url, timeout_s=timeout_s)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, str] | None = None, *, query: str | None = None) -> Any:
        """The ``data`` of a successful API answer; any other outcome as one PrometheusError line."""
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise PrometheusUnavailable(self.url, _one_line(str(exc)) or type(exc).__name__) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("status") == "success":
            return body.get("data")
        if isinstance(body, dict) and body.get("status") == "error":
            reason = _one_line(f"{body.get('errorType', 'error')}: {body.get('error', '')}")
            if response.status_code in (400, 422) and query is not None:
                raise BadQuery(f"Prometheus rejected the query {query!r}: {reason}")
            raise PrometheusError(f"Prometheus at {self.url} failed ({response.status_code}): {reason}")
        if response.status_code == 503:
            raise PrometheusUnavailable(self.url, "not ready yet (HTTP 503)")
        raise PrometheusError(
            f"{self.url} does not answer like Prometheus (HTTP {response.status_code} for {path}): "
            f"{_one_line(response.text)[:120]!r}"
        )

    # -- API --------------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when the server answers and has finished loading its data (``/-/ready``)."""
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        """The value of every series ``query`` returns now (or at ``at``); a scalar result is one unlabelled sample."""
        params = {"query": query}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        data = self._get("/api/v1/query", params, query=query)
        kind, result = data.get("resultType"), data.get("result")
        if kind == "vector":
            return [Sample(dict(item["metric"]), float(item["value"][1])) for item in result]
        if kind == "scalar":
            return [Sample({}, float(result[1]))]
        raise BadQuery(f"the query {query!r} returns a {kind}, not an instant vector")

    def range_(self, query: str, start: datetime, end: datetime, step: timedelta) -> list[Series]:
        """Every series ``query`` returns between ``start`` and ``end``, evaluated every ``step``."""
        params = {
            "query": query,
            "start": f"{start.timestamp():.3f}",
            "end": f"{end.timestamp():.3f}",
            "step": f"{max(step.total_seconds(), 0.001):.3f}",
        }
        data = self._get("/api/v1/query_range", params, query=query)
        return [
            Series(
                dict(item["metric"]),
                [_moment(float(ts)) for ts, _ in item["values"]],
                [float(value) for _, value in item["values"]],
            )
            for item in data.get("result", [])
        ]

    def data_span(self) -> tuple[datetime, datetime] | None:
        """The oldest and newest sample in the server's in-memory head block (about its last two hours).

        None while it holds no samples. That block always covers the recent past, which is what a default
        report range needs; older data in persisted blocks is reachable by asking for an explicit range.
        """
        head = self._get("/api/v1/status/tsdb").get("headStats", {})
        if not head.get("numSeries"):
            return None
        low, high = int(head.get("minTime", 0)), int(head.get("maxTime", 0))
        if high <= 0 or low > high:
            return None
        return _moment(low / 1000), _moment(high / 1000)
