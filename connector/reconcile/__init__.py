"""Level-triggered reconciliation: every due termination fully offboarded.

The CLI, the scheduler and the webhooks all call `reconcile(...)`; a webhook only
names whom to look at.
"""
from .engine import Report, reconcile, status_rows
from .restore import Restored, restore
from .schedule import next_wakeup

__all__ = ["Report", "Restored", "next_wakeup", "reconcile", "restore", "status_rows"]
