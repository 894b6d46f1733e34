"""Concurrent workers sharing one study through PostgreSQL (127.0.0.1:5432, trust auth).

Each test creates a fresh database and drops it afterwards.
"""
import subprocess
import sys
import uuid

import optuna
import pytest

from autoft.search.storage import normalize_url
from sweep_helpers import APP, FAST

pytestmark = pytest.mark.postgres



@pytest.fixture
def pg_url():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    except psycopg2.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {err}")
    admin.autocommit = True
    name = f"autoft_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_two_concurrent_workers_share_one_study(tmp_path, pg_url):
    n = 8
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST,
           "hydra.sweeper.poll_interval=0.2", f"hydra.sweeper.storage={pg_url}", f"search.n_trials={n}",
           "toy.sleep=0.1"]
    # separate working directories: the workers share nothing but the database
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    workers = [subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for d in dirs]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outs

    url = normalize_url(pg_url)
    names = optuna.get_all_study_names(url)
    assert len(names) == 1
    trials = optuna.load_study(study_name=names[0], storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * n  # exactly n, none surplus, none lost
    assert len({t.number for t in trials}) == n
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n  # no duplicated parameters
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers trained
    for out in outs:
        assert f"{n}/{n} finished" in out


def test_final_retrain_from_a_study_url_never_writes_its_password(tmp_path, pg_url):
    """`final_retrain.py --study postgresql://user:password@...`: the hyperparameters file it writes
    names the study and the storage with the password masked, as every output of a search does
    (trust auth: the server ignores the password, so the URL with one opens the same database)."""
    import argparse

    from autoft.errors import UserError
    from autoft.records import read_best_hparams
    from conftest import load_script

    url = pg_url.replace("postgres@", "postgres:s3cret@")
    study = optuna.create_study(study_name="s1", storage=normalize_url(url), direction="maximize")
    study.enqueue_trial({"trainer.lr_scale": 2.0, "trainer.weight_decay": 0.25})
    study.optimize(lambda t: t.suggest_float("trainer.lr_scale", 0.1, 10, log=True)
                   + t.suggest_float("trainer.weight_decay", 0, 1), n_trials=1)
    final_retrain = load_script("final_retrain")
    args = argparse.Namespace(hparams=None, study=url, study_name=None, dataset="shapes", model=None,
                              config_dir=None)

    path = final_retrain.autoft_hparams(args, tmp_path)
    text = path.read_text()
    assert "s3cret" not in text
    assert text.startswith(f"# chosen trial of study s1 in {url.replace('s3cret', '***')}\n")
    hp = read_best_hparams(path)
    assert (hp.lr_scale, hp.weight_decay) == (2.0, 0.25)
    assert hp.records["storage"] == url.replace("s3cret", "***") and hp.records["trial_number"] == 0

    optuna.create_study(study_name="s2", storage=normalize_url(url))
    with pytest.raises(UserError, match=r"postgres:\*\*\*@.* holds 2 studies \(s1, s2\)") as err:
        final_retrain.autoft_hparams(args, tmp_path)
    assert "s3cret" not in str(err.value)
