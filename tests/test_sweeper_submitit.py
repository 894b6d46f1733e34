"""Several slots in one sweeper process (hydra.sweeper.n_jobs) through a launcher that runs each
trial in its own process (submitit's local executor; the SLURM executor works the same way)."""
import subprocess
import sys

import optuna

from sweep_helpers import APP, FAST


def test_two_slots_without_a_batch_barrier(tmp_path):
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST, "search.n_trials=4",
           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "hydra.sweeper.n_jobs=2",
           "hydra.sweeper.poll_interval=0.2", "toy.fail_on=[1]", "toy.failure=diverge"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"sqlite:///{tmp_path / 'outputs/toy/toy/search-autoft/optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4 + ["FAIL"]
    assert trials[1].user_attrs["fail_reason"] == "diverged: loss is nan at step 2"  # came back from another process
    # the two slots overlapped: some trial started before an earlier one finished
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert len(list((tmp_path / "outputs/toy/toy/search-autoft" / name).glob("trial_*"))) == 5
