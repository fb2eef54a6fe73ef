"""Re-export of ``frameavg.metrics`` (its old place): the metrics serve every layer."""

from frameavg.metrics import *  # noqa: F401,F403
from frameavg.metrics import __all__  # noqa: F401
