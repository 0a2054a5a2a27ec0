"""Typed errors that tell the engine what to do next, in the manner of Kopf.

`where` names the place (a key path, a file and line, a provider and host) so a
technician sees `offboard: error: WHERE: WHAT` and knows where to look.
"""


class OffboardError(Exception):
    """Base class: a message and the place it applies to."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def at(self, where: str) -> "OffboardError":
        """Name the place, unless the raiser already named a more precise one."""
        self.where = self.where or where
        return self


class ConfigError(OffboardError):
    """Bad config, or a credential refused (401/403): what depends on it stops; exit 1."""


class RetryableError(OffboardError):
    """Transient (timeout, 429, 5xx, a conversion still running): try again after `delay` seconds."""

    def __init__(self, message: str, where: str = "", delay: float = 60.0):
        super().__init__(message, where)
        self.delay = delay


class PermanentError(OffboardError):
    """Will fail the same way every time; retried only when a person says `retry`."""


class NeedsHuman(OffboardError):
    """Automation must not decide (admin, protected, ambiguous, litigation hold)."""


class SourceError(OffboardError):
    """An HR feed failed or returned something unbelievable: that source contributes nothing this pass."""


class InputRejected(OffboardError):
    """One record of a feed is malformed: reported, and the rest of the feed still counts.

    `ids` names the terminations the record was about (when its employee id could be read):
    they still count as present, so a re-typed date never cancels its leaver.
    """

    def __init__(self, message: str, where: str = "", ids: tuple[str, ...] = ()):
        super().__init__(message, where)
        self.ids = ids


class NotYet(RetryableError):
    """A precondition is still settling (a mailbox conversion in progress): wait, this is not a failure."""


class Stopped(OffboardError):
    """Not started: a person cancelled or held the termination while the pass ran."""
