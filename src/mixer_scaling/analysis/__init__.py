"""Results and figures: runs (on disk or in W&B) → one table → the paper's figures and fits.

* :mod:`.results`: the results table's schema, :func:`collect` (run directories),
  :func:`collect_wandb` (a W&B project), parquet/CSV files.
* :mod:`.reference`: the paper's Tables 2 and 3 in the same schema.
* :mod:`.aggregate`: one point per configuration (seeds averaged with a Student-t interval,
  nothing else averaged), ``best_over`` keys chosen by a selection metric.
* :mod:`.fits`: saturating power laws ``err = a·x^(−b) + c`` with bootstrap intervals.
* :mod:`.figures`: Pareto frontiers (compute, throughput), data scaling, the paper's figures and
  overlays, each as PNG, PDF and CSV.
* :mod:`.findings`: the study's answers with bootstrap intervals over seeds (``findings.md``,
  ``findings.json``).
* :mod:`.dashboard`: one self-contained interactive ``dashboard.html`` (Plotly) per study.
* :mod:`.cli`: the ``collect`` and ``figures`` subcommands.

Importing this package imports neither pandas nor matplotlib (every ``mixer-scaling`` command builds its
parser from :mod:`.cli`); the names below load :mod:`.results` when first used.
"""

__all__ = ["Summary", "collect", "collect_wandb", "read_table", "write_table"]


def __getattr__(name: str):
    if name in __all__:
        from . import results

        return getattr(results, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
