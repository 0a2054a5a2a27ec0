"""Level-triggered reconciliation: every due termination fully offboarded.

The CLI, the scheduler and the webhooks all call `reconcile(...)`; a webhook only
names whom to look at.
"""
from .engine import Report, reconcile, status_rows

__all__ = ["Report", "reconcile", "status_rows"]
