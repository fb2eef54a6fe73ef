"""eSCN baseline (SO(2) convolutions in deterministic edge frames); see :mod:`.model` and :mod:`.so3`."""

from frameavg.models.escn.model import EQUAL_WIDTH_CONFIG, ESCN, PAPER_CONFIG

__all__ = ["ESCN", "EQUAL_WIDTH_CONFIG", "PAPER_CONFIG"]
