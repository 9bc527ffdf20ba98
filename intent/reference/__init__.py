"""Reference Context and Prediction services: real HTTP servers with deterministic answers
and fault injection, for the demo, the tests and the benchmarks."""

from intent.reference.app import (
    FaultConfig,
    ServiceState,
    make_context_app,
    make_prediction_app,
)
from intent.reference.server import (
    ReferenceControl,
    ReferenceServer,
    ReferenceServices,
    run_forever,
)

__all__ = [
    "FaultConfig",
    "ReferenceControl",
    "ReferenceServer",
    "ReferenceServices",
    "ServiceState",
    "make_context_app",
    "make_prediction_app",
    "run_forever",
]
