"""ram-ot: open-vocabulary multi-label recognition with RAM (Recover and Match, CVPR 2025).

The public API is re-exported here; anything not listed in ``__all__`` is private.
"""

from ram_ot._version import __version__

__all__ = ["__version__"]
