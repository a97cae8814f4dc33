"""Operating the pipeline: metrics endpoints, the local Prometheus, `top`, reports and dashboards."""

from services.monitoring.exporter import serve_metrics

__all__ = ["serve_metrics"]
