"""jaxbound: fundamental limits of adversarial robustness, measured from data, in JAX.

Submodules are imported on first use (``jaxbound.geometry``, ``jaxbound.data``, ...)
so that ``import jaxbound`` stays cheap and optional extras (TensorFlow) load
only when asked for.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "lp",
    "geometry",
    "data",
    "concentration",
    "bounds",
    "flow",
    "attacks",
    "metrics",
    "models",
    "training",
    "transforms",
    "shift",
    "generative",
    "certify",
    "distributed",
    "report",
    "cli",
)

__all__ = ["__version__", "clear_caches", *_SUBMODULES]


def clear_caches() -> None:
    """Drop every compiled kernel that jaxbound's block engine keeps (one cache for all modules)."""
    from jaxbound import _engine

    _engine.clear_cache()


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxbound.{name}")
    raise AttributeError(f"module 'jaxbound' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
