"""Study storage: URLs, opening, the claim lock, and the one wrapper of Optuna's private access.

Storages (any Optuna storage the URL names):
- `sqlite:///<path>` (default: `<sweep dir>/optuna.db`): one machine, any number of processes;
- `postgresql://user@host/db` (or mysql, ...): many nodes; put passwords in ~/.pgpass or PGPASSWORD
  rather than in the URL (URLs are written into trial configs; outputs mask the password);
- `journal:///<path>` (or a path ending in .log/.journal): an append-only file for shared file
  systems without a database server.

Heartbeats: RDB storages keep Optuna's (`RDBStorage(heartbeat_interval, grace_period)`, judged
on the database's clock); journal storages have none, so a beat writes an `autoft:heartbeat` system
attribute instead (StudyStorage.record_heartbeat). The threads that beat, and the judgement of
stale trials, live in autoft.search.liveness.

Outages: `open_storage` returns the storage wrapped so that every call to it waits out an outage
(autoft.search.outage: the window, its log lines). PostgreSQL connections get timeouts and TCP
keepalives, so a dead server or network is noticed within seconds rather than the operating system's minutes.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import random
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from autoft.errors import UserError
from autoft.search import outage as og

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "autoft:heartbeat"
ALIVE_ATTR = "autoft:alive"
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def quiet_optuna() -> None:
    """Silence Optuna's per-trial logging and its 'experimental' warnings (we print our own lines)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")


STUDY_FILE = "optuna.db"  # the SQLite file a sweep keeps its study in, by default


def default_storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / STUDY_FILE).resolve()}"


def storage_kind(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme == "journal" or (not scheme and url.endswith(_JOURNAL_SUFFIXES)):
        return "journal"
    if scheme in ("sqlite", "postgresql", "postgres", "mysql"):
        return "postgresql" if scheme == "postgres" else scheme
    if scheme:
        return "rdb"
    raise UserError(f"hydra.sweeper.storage '{url}' is not a storage URL; use sqlite:///<path>, "
                    "postgresql://user@host/db or journal:///<path>")


def journal_path(url: str) -> Path:
    return Path(url[len("journal://"):] if url.startswith("journal://") else url)


def sqlite_path(url: str) -> Optional[Path]:
    m = re.match(r"sqlite(\+\w+)?:///(.*)", url)
    return Path(m.group(2)) if m and m.group(2) and m.group(2) != ":memory:" else None


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg (v3) to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def mask_url(url: str) -> str:
    """The URL with its password hidden, for logs and output files."""
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", url)


# a dead PostgreSQL server or network is noticed in seconds (libpq's defaults wait for the operating
# system's TCP timeouts, minutes); keys the URL's query already sets are left to it
_PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                    "keepalives_count": 3, "tcp_user_timeout": 30000}


def _open(url: str, *, heartbeat_interval: Optional[int] = None, grace_period: Optional[int] = None,
          stale_callback: Optional[Callable] = None):
    """The Optuna storage a (normalized) URL names, created when needed; the driver's errors raised as they are.

    An RDB storage comes in Optuna's trial cache, as `optuna.load_study(storage=url)` gives it: a
    finished trial is read from the database once, not at every count and every sampler call (those
    read the whole study: without the cache a search's bookkeeping grows with the square of its trials)."""
    import optuna
    from optuna.storages import _CachedStorage

    kind = storage_kind(url)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the open(O_EXCL) lock works on NFS, where flock-style locks may not
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    engine_kwargs: dict[str, Any] = {}
    guard: Any = contextlib.nullcontext()
    if kind == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            guard = _flock(path.with_name(path.name + ".claim.lock"))  # one creator of the tables
        # several worker processes write to one file: wait for the lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if kind == "postgresql":
            query = url.split("?", 1)[1] if "?" in url else ""
            engine_kwargs["connect_args"] = {k: v for k, v in _PG_CONNECT_ARGS.items() if f"{k}=" not in query}
    for attempt in range(6):
        try:
            with guard if attempt == 0 else contextlib.nullcontext():
                return _CachedStorage(optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                                 heartbeat_interval=heartbeat_interval,
                                                                 grace_period=grace_period,
                                                                 heartbeat_stale_trial_callback=stale_callback))
        except Exception as err:
            # workers starting together on a fresh database race to create its tables: the
            # loser sees 'already exists' / a unique violation, and succeeds once they exist
            text = f"{err} {err.__cause__}".lower()
            racing = any(m in text for m in ("already exists", "duplicate key", "uniqueviolation",
                                             "unique constraint", "database is locked"))
            if not racing or attempt == 5:
                raise
            time.sleep(0.2 + random.random() * (attempt + 1))
    raise AssertionError("not reached")


def _cannot_open(url: str, err: BaseException) -> UserError:
    first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
    if isinstance(err, ImportError) or isinstance(err.__cause__, ImportError):
        first += f" ({err.__cause__ or err})"
    return UserError(f"cannot open the study storage {mask_url(url)}: {first}. Check that the server is "
                     "running and reachable (or the path is writable), or choose another storage with "
                     "hydra.sweeper.storage=<url>.")


def open_storage(url: str, *, heartbeat_interval: Optional[int] = None, grace_period: Optional[int] = None,
                 stale_callback: Optional[Callable] = None, outage_window: Optional[float] = None):
    """Open (creating when needed) the storage a URL names, wrapped to ride out outages of up to
    `outage_window` s (resilient_storage). A storage that cannot be opened now is a UserError at once:
    at the start that is most often a wrong URL or a server not started, and nothing is running yet."""
    url = normalize_url(url)
    try:
        inner = _open(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      stale_callback=stale_callback)
    except UserError:
        raise
    except Exception as err:  # driver missing, server down, bad credentials, unwritable path
        raise _cannot_open(url, err) from None
    return resilient_storage(lambda: inner, og.outage_for(url, mask_url(url), outage_window))


_REPORT_STORAGES: dict[str, Any] = {}
_REPORT_LOCK = threading.Lock()


def cached_storage(url: str, outage_window: Optional[float] = None):
    """One storage per URL and process (trials report through it; no heartbeat of its own). It opens
    at its first call and inside the outage retry: a trial that starts while the storage is away waits
    for it like any other call, instead of stopping the search as a wrong URL would."""
    url = normalize_url(url)

    def opener():
        try:
            return _open(url)
        except Exception as err:
            if og.unreachable(err):
                raise
            raise _cannot_open(url, err) from None

    with _REPORT_LOCK:
        if url not in _REPORT_STORAGES:
            _REPORT_STORAGES[url] = resilient_storage(opener, og.outage_for(url, mask_url(url), outage_window))
        return _REPORT_STORAGES[url]


@contextlib.contextmanager
def _flock(lock_file: Path) -> Iterator[None]:
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Claim:
    """A taken claim lock. `held()` says whether it serialised the work done under it: not on a
    storage without a claim lock (`locked` False), nor once a PostgreSQL advisory lock died with its
    connection (a server restart)."""

    def __init__(self, conn=None, locked: bool = True):
        self.conn, self.locked = conn, locked

    def held(self) -> bool:
        if self.conn is None:
            return self.locked
        import sqlalchemy

        try:
            self.conn.execute(sqlalchemy.text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 (a dead connection: the lock went with it)
            return False


def _release(conn) -> None:
    """End the lock's transaction (releasing it); on a dead connection the server already has."""
    for end in (conn.rollback, conn.close):
        try:
            end()
        except Exception as err:  # noqa: BLE001
            log.debug("claim lock connection: %s", err)


@contextlib.contextmanager
def claim_lock(url: str, storage, study_name: str) -> Iterator[Claim]:
    """Serialise 'count the study, then ask for a trial' across all workers of a study.

    Without it two workers could both see room for the last trial and overshoot n_trials. SQLite:
    an flock on a file beside the database (one machine); PostgreSQL: a transaction-scoped advisory
    lock (taken through the storage's outage retry); journal: Optuna's O_EXCL lock file. A dead holder
    releases it (process exit, closed connection, or the lock file's 30 s grace period). Other
    storages (their Claim never `held()`) fall back to the sweeper's after-ask surplus check, as does a
    claim that was not `held()` to its end. Yields the Claim.
    """
    kind = storage_kind(url)
    if kind == "sqlite" and sqlite_path(url) is not None:
        with _flock(sqlite_path(url).with_name(sqlite_path(url).name + ".claim.lock")):
            yield Claim()
        return
    if kind == "postgresql":
        import sqlalchemy

        engine = getattr(storage, "engine", None) or getattr(getattr(storage, "_backend", None), "engine", None)
        if engine is not None:
            key = int.from_bytes(hashlib.sha256(f"autoft-claim:{study_name}".encode()).digest()[:8], "big",
                                 signed=True)

            def lock():
                conn = engine.connect()
                try:  # released when the transaction ends, or when a dead worker's connection drops
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                except BaseException:
                    _release(conn)
                    raise
                return conn

            outage = getattr(storage, "outage", None)
            conn = outage.call(lock) if outage is not None else lock()
            try:
                yield Claim(conn)
            finally:
                _release(conn)
            return
    if kind == "journal":
        from optuna.storages.journal import JournalFileOpenLock

        lock = JournalFileOpenLock(str(journal_path(url)) + ".claim", grace_period=30)
        lock.acquire()
        try:
            yield Claim()
        finally:
            lock.release()
        return
    yield Claim(locked=False)


PROGRESS_ATTR = "autoft:progress"  # trial system attribute: the task's last reported step


# ----------------------------------------------------------------------------- riding out outages

# the storage methods that reach the database (Optuna's abstract ones, those its cache overrides,
# and the heartbeat's): each call goes through Outage.call. BaseStorage's other methods are built on
# these, so they are retried too.
_RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
            "get_trial_id_from_study_id_trial_number", "set_trial_intermediate_value", "set_trial_user_attr",
            "set_trial_system_attr", "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat",
            "_get_stale_trial_ids")


def _retried(name: str) -> Callable:
    def method(self, *args, **kwargs):
        return self.outage.call(lambda: getattr(self.inner(), name)(*args, **kwargs))

    method.__name__ = name
    return method


@functools.lru_cache(maxsize=None)
def _resilient_class():
    """Built at first use: Optuna is imported late (Hydra imports the plugin on every run)."""
    import abc

    import optuna
    from optuna.storages import BaseStorage
    from optuna.storages._heartbeat import BaseHeartbeat

    class ResilientStorage(BaseStorage, BaseHeartbeat):
        """An Optuna storage whose every call waits out an outage (autoft.search.outage.Outage.call).

        Optuna's Study, Trial and our StudyStorage all go through it, so no call site retries on its
        own. `open_inner()` gives the storage it wraps; it runs at the first call, inside the retry.
        """

        def __init__(self, open_inner: Callable[[], Any], outage: og.Outage):
            self._open_inner, self.outage = open_inner, outage
            self._inner: Any = None
            self._open_lock = threading.Lock()

        def inner(self):
            if self._inner is None:
                with self._open_lock:
                    if self._inner is None:
                        self._inner = self._open_inner()
            return self._inner

        def opened(self):
            """The inner storage, opened (inside the retry) when it is not yet. Once open, no call
            reaches the database: its success must not be taken for the storage's return."""
            return self._inner if self._inner is not None else self.outage.call(self.inner)

        @property
        def engine(self):
            """The SQLAlchemy engine of an RDB storage (the claim lock's connection), else None."""
            inner = self.opened()
            return getattr(inner, "engine", None) or getattr(getattr(inner, "_backend", None), "engine", None)

        def get_heartbeat_interval(self):
            inner = self.opened()
            return inner.get_heartbeat_interval() if isinstance(inner, BaseHeartbeat) else None

        def get_heartbeat_stale_trial_callback(self):
            inner = self.opened()
            return inner.get_heartbeat_stale_trial_callback() if isinstance(inner, BaseHeartbeat) else None

        def set_trial_state_values(self, trial_id, state, values=None):
            """Retried like the rest; a retry that finds the trial already finished as asked means the
            first try was committed before its answer was lost: that is success, not a conflict."""
            tries = [0]

            def once():
                tries[0] += 1
                try:
                    return self.inner().set_trial_state_values(trial_id, state=state, values=values)
                except optuna.exceptions.UpdateFinishedTrialError:
                    if tries[0] > 1:
                        t = self.inner().get_trial(trial_id)
                        if t.state == state and (values is None or list(t.values or []) == list(values)):
                            return True
                    raise

            return self.outage.call(once)

    for name in _RETRIED:
        setattr(ResilientStorage, name, _retried(name))
    abc.update_abstractmethods(ResilientStorage)
    return ResilientStorage


def resilient_storage(open_inner: Callable[[], Any], outage: og.Outage):
    """The storage `open_inner()` gives, every call of it riding out outages (see ResilientStorage)."""
    return _resilient_class()(open_inner, outage)


# ----------------------------------------------------------------------------- the one wrapper

class StudyStorage:
    """One study in its Optuna storage: the only code that touches Optuna's private attributes.

    Optuna's public Study API cannot read a trial by id, write study system attributes, beat a
    heartbeat, or list the trials whose heartbeat went stale; all of that leans on private names
    (`study._storage`, `study._study_id`, `trial._trial_id`, `RDBStorage._get_stale_trial_ids`,
    `optuna.storages._heartbeat`, `_CachedStorage._backend`) that may change in any Optuna
    release. Here they are spelled once, so an Optuna upgrade touches one class;
    tests/test_storage_wrapper.py fails when another file reaches for them. The records the
    sweeper keeps (re-evaluations, trial heartbeats, progress, failure reasons)
    go through the same methods.
    """

    def __init__(self, study):
        self.study = study
        self.storage = study._storage  # open_storage's wrapper: an RDB storage inside it in Optuna's trial cache
        self.study_id = study._study_id

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def outage(self) -> Optional[og.Outage]:
        """What this process knows of the storage's reachability (None: a storage opened elsewhere)."""
        return getattr(self.storage, "outage", None)

    # trials -------------------------------------------------------------

    @staticmethod
    def trial_id(trial) -> int:
        """The storage's id of a Trial or FrozenTrial (unique across studies; `number` is per study)."""
        return int(trial if isinstance(trial, int) else trial._trial_id)

    def trial(self, trial):
        """The trial as the storage holds it now (a FrozenTrial), by Trial, FrozenTrial or id."""
        return self.storage.get_trial(self.trial_id(trial))

    def live_trial(self, trial_id: int):
        """A writable Trial of this study (a task reporting to its trial from another process)."""
        import optuna

        return optuna.trial.Trial(self.study, int(trial_id))

    def set_trial_user_attrs(self, trial, attrs: Mapping[str, Any]) -> bool:
        """Write user attributes; False when the trial already finished (another worker failed it)."""
        import optuna

        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(self.trial_id(trial), key, value)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def set_trial_system_attr(self, trial, key: str, value: Any) -> None:
        self.storage.set_trial_system_attr(self.trial_id(trial), key, value)

    def trial_system_attrs(self, trial) -> dict:
        return dict(self.storage.get_trial_system_attrs(self.trial_id(trial)))

    def fail_trial(self, trial, user_attrs: Mapping[str, Any]) -> bool:
        """Mark a RUNNING trial FAIL with its reason attributes; False when it finished meanwhile."""
        import optuna
        from optuna.trial import TrialState

        try:
            if not self.set_trial_user_attrs(trial, user_attrs):
                return False
            return bool(self.storage.set_trial_state_values(self.trial_id(trial), state=TrialState.FAIL))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    # liveness -----------------------------------------------------------

    @functools.cached_property
    def rdb_heartbeat(self) -> bool:
        """Whether the storage keeps Optuna's own heartbeats (RDB with heartbeat_interval)."""
        from optuna.storages._heartbeat import is_heartbeat_enabled

        return is_heartbeat_enabled(self.storage)

    def record_heartbeat(self, trial) -> None:
        """One beat: Optuna's heartbeat row (RDB), else our timestamp attribute (journal)."""
        if self.rdb_heartbeat:
            self.storage.record_heartbeat(self.trial_id(trial))
        else:
            self.set_trial_system_attr(trial, HEARTBEAT_ATTR, time.time())

    def stale_trial_ids(self) -> list[int]:
        """RUNNING trials whose RDB heartbeat is older than the grace period (database clock)."""
        if not self.rdb_heartbeat:
            return []
        return list(self.storage._get_stale_trial_ids(self.study_id))

    # study records ------------------------------------------------------

    def study_records(self, prefix: str, *, system: bool = False) -> dict:
        """Study attributes whose key starts with `prefix`, keyed by the rest of the key."""
        read = self.storage.get_study_system_attrs if system else self.storage.get_study_user_attrs
        return {k[len(prefix):]: v for k, v in read(self.study_id).items() if k.startswith(prefix)}

    def write_study_record(self, key: str, value: Any, *, system: bool = False) -> None:
        write = self.storage.set_study_system_attr if system else self.storage.set_study_user_attr
        write(self.study_id, key, value)

    # handles and locks --------------------------------------------------

    def load(self, *, sampler=None, pruner=None):
        """Another Study object on the same storage (its own sampler: one per slot)."""
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler, pruner=pruner)

    def claim_lock(self, url: str):
        """The study's claim lock (see claim_lock); yields a Claim."""
        return claim_lock(url, self.storage, self.name)
