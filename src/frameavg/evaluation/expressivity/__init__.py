"""Geometric expressivity suite: can a model tell apart geometric graphs that invariant models
provably confuse? k-chains, L-fold stars and the Pozdnyakov et al. counterexamples, trained per
seed and tested as given and under random rigid motions (see docs/expressivity.md).

Example::

    from frameavg.evaluation.expressivity import SuiteSettings, run_suite, markdown_tables
    result = run_suite(["faenet-fa", "schnet"], SuiteSettings.quick())
    print(markdown_tables(result.records))
"""

from frameavg.evaluation.expressivity.harness import (
    DEFAULT_MODELS,
    FAENET_VARIANTS,
    TESTS,
    Record,
    SuiteResult,
    SuiteSettings,
    build_model,
    model_problem,
    run_suite,
    suite_jobs,
    train_and_test,
)
from frameavg.evaluation.expressivity.report import markdown_tables, write_docs, write_figure
from frameavg.evaluation.expressivity.structures import (
    COUNTEREXAMPLES,
    GeometricPair,
    counterexample_pair,
    k_chain_pair,
    star_pair,
)

__all__ = [
    "COUNTEREXAMPLES", "DEFAULT_MODELS", "FAENET_VARIANTS", "TESTS", "GeometricPair", "Record", "SuiteResult",
    "SuiteSettings", "build_model", "counterexample_pair", "k_chain_pair", "markdown_tables", "model_problem",
    "run_suite", "star_pair", "suite_jobs", "train_and_test", "write_docs", "write_figure",
]
