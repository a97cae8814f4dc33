"""The operator's tools: the Prometheus client behind `top` and `report`, the views, the dashboards.

Nothing below this package imports it: every service's own ``/metrics`` endpoint lives in
:mod:`streamscore.exporter`, at the bottom. `top` (rich) and `report` (matplotlib, MLflow) are imported by
their commands from their own modules.
"""

from streamscore.monitoring.prom import Prometheus, PrometheusError

__all__ = ["Prometheus", "PrometheusError"]
