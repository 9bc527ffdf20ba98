"""The operators' HTTP endpoint (``intent admin``): health, circuit breakers, rate limits
and Prometheus metrics."""

from intent.admin.app import AdminApp
from intent.admin.server import serve

__all__ = ["AdminApp", "serve"]
