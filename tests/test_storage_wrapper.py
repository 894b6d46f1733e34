"""One storage wrapper (autoft.search.storage.StudyStorage) owns every private Optuna access.

The scan fails when any other source file reaches for a private attribute or module of Optuna's
storages, studies or trials: an Optuna upgrade must stay one file's work. The wrapper's own
methods are checked on real storages.
"""
import re
from pathlib import Path

import optuna
import pytest

from autoft.search.storage import StudyStorage, open_storage, quiet_optuna

quiet_optuna()

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "src" / "autoft" / "search" / "storage.py"
PRIVATE = re.compile(
    r"\._(storage|study_id|trial_id|backend|cached_frozen_trial|get_stale_trial_ids)\b"  # private attributes
    r"|\boptuna(\.\w+)*\._\w+"  # private modules: optuna.storages._heartbeat, ...
    r"|\bfrom\s+optuna[\w.]*\s+import\s+(\([^)]*)?\b_\w+")  # a private name imported from optuna


def private_uses(root: Path, files=None, home: Path = HOME) -> list[str]:
    """'path:line: text' for each private Optuna access in `files` (default: every .py under root)
    outside `home`."""
    hits = []
    for path in sorted(files if files is not None else root.rglob("*.py")):
        if path.resolve() == home.resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PRIVATE.search(line):
                hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return hits


def test_only_the_storage_wrapper_touches_private_optuna_attributes():
    files = [*REPO.glob("*.py"), *(REPO / "src").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]
    assert any(f.name == "sweeper.py" for f in files) and HOME in files  # the scan sees the source tree
    hits = private_uses(REPO, files)
    assert not hits, "private Optuna access outside src/autoft/search/storage.py (use StudyStorage):\n" + \
        "\n".join(hits)


@pytest.mark.parametrize("line", [
    "x = study._storage.get_trial(1)",
    "tid = trial._trial_id",
    "sid = study._study_id",
    "engine = storage._backend.engine",
    "ids = rdb._get_stale_trial_ids(1)",
    "from optuna.storages._heartbeat import is_heartbeat_enabled",
    "import optuna.storages._cached_storage",
    "from optuna.storages import _CachedStorage",
])
def test_the_scan_finds_each_kind_of_private_access(tmp_path, line):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(f"import optuna\n\n\ndef f(study, trial, storage, rdb):\n    {line}\n")
    assert private_uses(tmp_path) == [f"pkg/mod.py:5: {line}"]


@pytest.mark.parametrize("line", ["self._storage_url = url", "trial_id = store.trial_id(trial)",
                                  "store = StudyStorage(study)", "optuna.storages.RDBStorage(url)"])
def test_the_scan_leaves_public_names_alone(tmp_path, line):
    (tmp_path / "mod.py").write_text(line + "\n")
    assert private_uses(tmp_path) == []


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_wrapper_reads_and_writes_trials_and_records(tmp_path, kind):
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:///{tmp_path}/s.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat_interval=1, grace_period=3))
    store = StudyStorage(study)
    assert store.name == "s" and store.rdb_heartbeat == (kind == "sqlite")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    assert store.trial(trial).number == trial.number == store.trial(store.trial_id(trial)).number
    assert store.set_trial_user_attrs(trial, {"worker": "h:1"})
    store.record_heartbeat(trial)
    store.set_trial_system_attr(trial, "k", {"a": 1})
    assert store.trial_system_attrs(trial)["k"] == {"a": 1} and store.trial(trial).user_attrs["worker"] == "h:1"
    assert store.stale_trial_ids() == []
    store.write_study_record("rec:1", {"v": 1})
    store.write_study_record("rec:2", {"v": 2}, system=True)
    assert store.study_records("rec:") == {"1": {"v": 1}} and store.study_records("rec:", system=True) == {"2": {"v": 2}}
    other = store.load()  # another handle on the same study
    assert other.study_name == "s" and [t.number for t in other.trials] == [trial.number]
    assert store.fail_trial(trial, {"fail_kind": "lost"})
    assert store.trial(trial).state.name == "FAIL"
    # a finished trial takes no more writes: False, not an exception
    assert not store.fail_trial(trial, {"fail_kind": "lost"})
    assert not store.set_trial_user_attrs(trial, {"late": 1})
    with store.claim_lock(url):
        pass


def test_a_finished_trial_is_read_from_the_database_once_and_a_running_one_at_every_read(tmp_path):
    """open_storage keeps Optuna's trial cache (what optuna.load_study(storage=url) gives): the sweeper
    reads the whole study several times per trial, and without it every read fetches every trial
    (scripts/bench_study_reads.py; its dated measurements are in docs/speed.md)."""
    import sqlite3

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    for i in range(3):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, float(i))
    running = study.ask()
    assert [t.value for t in study.get_trials()] == [0.0, 1.0, 2.0, None]
    with sqlite3.connect(tmp_path / "s.db") as conn:  # the finished values changed behind the storage's back
        conn.execute("UPDATE trial_values SET value = 9.0")
    other = optuna.load_study(study_name="s", storage=open_storage(url))  # another worker, its own storage
    assert [t.value for t in other.get_trials()][:3] == [9.0] * 3  # it reads the database
    other.tell(running.number, 5.0)
    trials = study.get_trials()
    assert [t.value for t in trials] == [0.0, 1.0, 2.0, 5.0]  # finished ones from the cache; the running one anew
    assert trials[3].state.name == "COMPLETE"


def test_the_study_reads_benchmark_runs(capsys):
    from conftest import load_script

    bench = load_script("bench_study_reads")
    rows = bench.main(["--trials", "3,6", "--reads", "2"])
    assert [r["trials"] for r in rows] == [3, 6] and all(r["cached_ms"] > 0 and r["bare_ms"] > 0 for r in rows)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("| finished trials |") and printed[2].startswith("| 3 | ") and len(printed) == 4
