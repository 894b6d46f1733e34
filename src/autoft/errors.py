"""Exceptions that separate a user's mistake from a failing trial.

A `UserError` (bad config, missing data, unknown name) stops a whole search at once and is printed
as one message without a traceback. A `TrialDiverged` marks one trial as failed; the search goes on.
"""


class UserError(Exception):
    """Something the user can fix: the message names the config key or path, and the fix."""


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite (or exploded); the trial is recorded as failed."""
