"""Operating the pipeline: metrics endpoints, the Prometheus client behind `top` and `report`, dashboards.

Kept light on purpose: every service imports :func:`serve_metrics`; `top` (rich) and `report` (matplotlib,
MLflow) are imported by their commands from their own modules.
"""

from streamscore.monitoring.exporter import serve_metrics
from streamscore.monitoring.prom import Prometheus, PrometheusError

__all__ = ["Prometheus", "PrometheusError", "serve_metrics"]
