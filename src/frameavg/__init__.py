"""frameavg: frame averaging and FAENet for machine learning on 3D atomic systems."""

__version__ = "0.1.0"

from frameavg.errors import FrameavgError, DataError  # noqa: E402

__all__ = ["FrameavgError", "DataError", "__version__"]
