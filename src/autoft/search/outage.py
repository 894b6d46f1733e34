"""Study storage outages: which errors mean "unreachable", and how long a worker waits for it.

A database restart, a failover or a network blip makes every call to the study's storage fail for a
while. That is neither the trial's fault nor the user's, so it must not fail trials or stop workers.
`Outage` (one per storage URL and process, `outage_for`) turns those failures into a wait: a call is
retried with backoff for up to the window (hydra.sweeper.storage_outage_window), with one line when
the storage goes away and one when it is back. Past the window the worker stops with
`StorageUnreachable`: one message that names the storage and says a rerun resumes.

Only connection-level failures count (`unreachable`): a query the database refuses, a wrong password
or a missing database is raised at once, as before. The retry lives in one place, the storage
wrapper (autoft.search.storage.resilient_storage), which sends every call through `Outage.call`.

Beats (heartbeats, progress reports, intermediate reports) run under `fail_fast()`: they try once
and are tried again at their next turn, so a thread that beats never blocks on an outage and
stopping it never waits for one. A failure there still counts: it is often the first to notice.
"""
from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Any, Callable, Iterator, Optional

from autoft.errors import UserError

log = logging.getLogger("hydra_plugins.autoft_optuna_sweeper.sweeper")  # the search's own log lines

# for callers outside a search (library code, tests); the sweeper passes its setting, whose default
# lives in the settings (autoft.search.settings.SearchSettings.storage_outage_window)
DEFAULT_WINDOW = 300.0
FIRST_DELAY, MAX_DELAY = 0.5, 5.0  # backoff between retries (jittered): quick to notice the return

# connection-level errors that will not clear by waiting: the URL or the account is wrong, or the
# schema is missing (SQLite says "no such table" with an OperationalError)
_PERMANENT = ("password authentication failed", "authentication failed", "no password supplied",
              "no pg_hba.conf entry", "does not exist", "could not translate host name", "name or service not known",
              "access denied", "unknown database", "no such table", "no such column", "syntax error",
              "permission denied", "readonly database", "read-only")


class StorageUnreachable(UserError):
    """The study's storage stayed unreachable past the window. Not the user's mistake, but stopped
    the same way (one message, no traceback, a non-zero exit): nothing is lost, a rerun resumes."""


def chain(err: Optional[BaseException]) -> Iterator[BaseException]:
    """An exception and those behind it (__cause__, else __context__), each once."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def unreachable(err: BaseException) -> bool:
    """Whether `err` says the storage could not be reached (connection refused, closed or reset, a
    server shutting down, SQLite's file locked), as opposed to a query it refused. Optuna wraps every
    driver error in a StorageInternalError whose message blames the data; its cause decides."""
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover (journal storages only)
        return False
    for e in chain(err):
        if isinstance(e, StorageUnreachable):
            return True
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True  # the dialect itself recognised a disconnect
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)):
            text = str(getattr(e, "orig", None) or e).lower()
            return not any(m in text for m in _PERMANENT)
    return False


def reason(err: BaseException) -> str:
    """The driver's own first line (what the server or the socket said), without SQLAlchemy's wrapping."""
    err = next((e.orig for e in chain(err) if getattr(e, "orig", None) is not None), err)
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    return lines[0].rstrip(".") if lines else type(err).__name__


_FAST = threading.local()


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Calls in this block try once (a beat: it is tried again at its next turn)."""
    before = getattr(_FAST, "on", False)
    _FAST.on = True
    try:
        yield
    finally:
        _FAST.on = before


def once_or(default: Any, fn: Callable[[], Any]) -> Any:
    """fn(), trying the storage once (fail_fast); `default` while it is unreachable (other errors raise)."""
    try:
        with fail_fast():
            return fn()
    except Exception as err:
        if not unreachable(err):
            raise
        return default


class Outage:
    """What this process knows of one storage's reachability, and the retry of its calls."""

    def __init__(self, label: str, window: float = DEFAULT_WINDOW):
        self.label, self.window = label, float(window)
        self.since: Optional[float] = None  # when the current outage began (None: reachable)
        self.back_at: Optional[float] = None  # when the last outage ended
        self.last_reason = ""
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, err: BaseException) -> float:
        """Note a failed call; the start of the outage it belongs to (logged once, when it begins)."""
        with self._lock:
            self.last_reason = reason(err)
            if self.since is None:
                self.since = time.time()
                log.warning("study storage %s unreachable since %s (%s); retrying for up to %.0f s "
                            "(hydra.sweeper.storage_outage_window); running trials keep training", self.label,
                            time.strftime("%H:%M:%S", time.localtime(self.since)), self.last_reason, self.window)
            return self.since

    def recovered(self) -> None:
        if self.since is None:  # the common case, without the lock
            return
        with self._lock:
            if self.since is not None:
                self.back_at = time.time()
                log.info("study storage %s reachable again after %.0f s", self.label, self.back_at - self.since)
                self.since = None

    def back_within(self, seconds: float) -> bool:
        """Whether the storage came back from an outage less than `seconds` ago (and is still up)."""
        return self.back_at is not None and not self.down and time.time() - self.back_at < seconds

    def stopped(self, since: float) -> StorageUnreachable:
        return StorageUnreachable(
            f"the study storage {self.label} has been unreachable for {time.time() - since:.0f} s, longer than "
            f"hydra.sweeper.storage_outage_window={self.window:g} s (last error: {self.last_reason}). This worker "
            "stops; the study keeps every finished trial and retries the running ones: rerun the same command "
            "to resume once the storage is back.")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), retried while the storage is unreachable and the window lasts."""
        delay = FIRST_DELAY
        while True:
            try:
                result = fn(*args, **kwargs)
            except StorageUnreachable:
                raise
            except Exception as err:
                if not unreachable(err):
                    raise
                since = self.failed(err)
                if getattr(_FAST, "on", False):
                    raise
                left = since + self.window - time.time()
                if left <= 0:
                    raise self.stopped(since) from None
                time.sleep(min(left, delay * random.uniform(0.5, 1.0)))  # jitter: workers do not return in step
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.recovered()
            return result


_OUTAGES: dict[str, Outage] = {}
_OUTAGES_LOCK = threading.Lock()


def outage_for(url: str, label: str, window: Optional[float] = None) -> Outage:
    """The one Outage of a storage URL in this process (the search and its in-process trials share
    it: one line per outage); `window` (the sweeper's setting) replaces the one it had."""
    with _OUTAGES_LOCK:
        outage = _OUTAGES.get(url)
        if outage is None:
            outage = _OUTAGES[url] = Outage(label, DEFAULT_WINDOW if window is None else window)
        elif window is not None:
            outage.window = float(window)
        return outage
