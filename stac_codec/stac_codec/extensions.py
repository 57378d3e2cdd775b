"""The C++ extensions stac_codec's setup.py builds, loaded with one clear error when missing.

A checkout whose extensions were never built (or were built before one was added) would
otherwise fail deep inside a node with a bare ImportError; this names the fix instead.
"""

import importlib
from types import ModuleType


def load_extension(name: str) -> ModuleType:
    """`stac_codec.<name>`, or an ImportError that says how to build it."""
    try:
        return importlib.import_module(f"stac_codec.{name}")
    except ImportError as error:
        raise ImportError(
            f"stac_codec.{name} is not built: run scripts/setup.sh (or colcon build in the "
            "workspace)"
        ) from error
