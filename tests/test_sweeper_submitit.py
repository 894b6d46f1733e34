"""Several slots in one sweeper process (hydra.sweeper.n_jobs) through a launcher that runs each
trial in its own process (submitit's local executor; the SLURM executor works the same way), for the
search and then for the top-k re-evaluation step."""
import subprocess
import sys

import optuna

from autoft.search.reevaluation import records
from sweep_helpers import APP, FAST


def test_two_slots_without_a_batch_barrier(tmp_path):
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST, "search.n_trials=4",
           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "hydra.sweeper.n_jobs=2",
           "hydra.sweeper.poll_interval=0.2", "toy.fail_on=[1]", "toy.failure=diverge",
           "search.reevaluate_top_k=2", "search.reevaluate_seeds=1"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"sqlite:///{tmp_path / 'outputs/toy/toy/search-autoft/optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4 + ["FAIL"]
    assert trials[1].user_attrs["fail_reason"] == "diverged: loss is nan at step 2"  # came back from another process
    # the two slots overlapped: some trial started before an earlier one finished
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert len(list((tmp_path / "outputs/toy/toy/search-autoft" / name).glob("trial_*"))) == 5
    # then the re-evaluation step runs in the same slots: each of the two best trials once
    assert sorted(r["state"] for r in records(study).values()) == ["complete", "complete"]
    assert len(list((tmp_path / "outputs/toy/toy/search-autoft" / name / "reevaluation").glob("trial_*"))) == 2
