"""Test-set evaluation (``frameavg test``/``predict``): ``frameavg.training.inference``, which the
end-of-training test of ``frameavg train`` uses too (training sits before evaluation)."""

from frameavg.training.inference import baseline_metrics, evaluate, paper_unit_metrics

__all__ = ["baseline_metrics", "evaluate", "paper_unit_metrics"]
