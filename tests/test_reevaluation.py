"""Top-k re-evaluation (search.reevaluate_top_k): the k best trials re-run with fresh seeds choose the
winner; both scores reach best_hparams.yaml, trials.csv, the history plot and the selection report.

The toy app (tests/apps/) makes a seed's score differ from the hyperparameters' true score: a
`lucky` weight decay scores +1 with the search's seed only, so the search ranks it first and fresh
seeds do not confirm it. A real SQLite study; the app runs in this process (run_app_here) unless the
processes are what a test is about (a worker killed mid-re-evaluation, two workers); one test runs
train.py end to end (in this process too, conftest.run_train).
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import load_script, run_script, run_train
from sweep_helpers import APP, FAST, SWEEP, TINY, run_app_here
WEIGHTS = {k: 0.01 for k in ("hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero")}
GOOD = {"loss_weights": WEIGHTS, "lr_scale": 10 ** 0.5, "weight_decay": 0.3}  # the toy's optimum: 1.0
LUCKY = {"loss_weights": WEIGHTS, "lr_scale": 10 ** 0.5, "weight_decay": 0.9}  # true 0.64, +1 with seed 0
NOISY = ["toy.seed_noise=0.01", "toy.lucky_weight_decay=0.9", "toy.lucky_bonus=1.0"]


def toy_module():
    return load_script(APP)


def warm_starts(tmp_path):
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump({"good": GOOD, "lucky": LUCKY}))
    return f"hydra.sweeper.warm_start=[{path}]"


def the_study(cwd):
    url = f"sqlite:///{Path(cwd) / SWEEP / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)  # re-evaluations never add a study
    return optuna.load_study(study_name=name, storage=url)


def reevaluations(study):
    from autoft.search.reevaluation import records

    return records(study)


def test_reevaluation_changes_the_winner_and_the_choice_follows_it(tmp_path):
    args = ["search.n_trials=4", warm_starts(tmp_path), "search.reevaluate_top_k=2", "search.reevaluate_seeds=2",
            "hydra.sweeper.plots=true", *NOISY]
    first = run_app_here(tmp_path, *args)
    study = the_study(tmp_path)
    trials = study.trials
    # re-evaluations are not trials: the study holds its 4 search trials, the total is untouched
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    good, lucky = trials[0], trials[1]
    assert good.params["trainer.weight_decay"] == 0.3 and lucky.params["trainer.weight_decay"] == 0.9
    assert study.best_trial.number == 1 and lucky.value == pytest.approx(1.64, abs=0.011)  # the lucky seed

    # the two best by search score were re-run with seeds 1000, 1001; each score is the mean of its seeds,
    # and each seed's score is what the toy gives those hyperparameters with that seed
    toy = toy_module()
    recs = reevaluations(study)
    assert sorted(recs) == [0, 1]
    for t in (good, lucky):
        rec = recs[t.number]
        assert rec["state"] == "complete" and rec["seeds"] == [1000, 1001]
        assert rec["search_value"] == t.value
        cfg = OmegaConf.create({"method": {"loss_weights": {"ce": 1.0, **WEIGHTS}},
                                "trainer": {"lr_scale": t.params["trainer.lr_scale"],
                                            "weight_decay": t.params["trainer.weight_decay"]},
                                "toy": {"seed_noise": 0.01, "lucky_seed": 0, "lucky_weight_decay": 0.9,
                                        "lucky_bonus": 1.0}})
        want = [toy.score(cfg) + toy.seed_term(cfg, s) for s in (1000, 1001)]
        assert rec["per_seed"] == pytest.approx(want, abs=1e-9)
        assert rec["value"] == pytest.approx(sum(want) / 2, abs=1e-9)
        assert rec["ci_low"] < rec["value"] < rec["ci_high"]
        run_cfg = yaml.safe_load((tmp_path / SWEEP / study.study_name / "reevaluation" / f"trial_{t.number}" /
                                  ".hydra" / "config.yaml").read_text())
        assert run_cfg["seed"] == 1000 and run_cfg["search"]["seeds_per_trial"] == 2
        run_hydra = yaml.safe_load((tmp_path / SWEEP / study.study_name / "reevaluation" /
                                    f"trial_{t.number}" / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert run_cfg["search"]["reevaluation_of"] == t.number and not run_hydra["sweeper"]["trial"]
        assert run_cfg["trainer"]["weight_decay"] == t.params["trainer.weight_decay"]
    assert recs[1]["value"] < 0.66 < 0.99 < recs[0]["value"]  # luck not confirmed

    # the winner follows the re-evaluated score, not the search score
    best = yaml.safe_load((tmp_path / SWEEP / study.study_name / "best_hparams.yaml").read_text())
    assert best == yaml.safe_load((tmp_path / SWEEP / "best_hparams.yaml").read_text())
    assert best["trial_number"] == 0 and best["weight_decay"] == 0.3
    assert best["selected_by"] == "reevaluation" and best["search_best_trial"] == 1
    assert best["objective"] == good.value and best["reevaluated_objective"] == recs[0]["value"]
    assert best["reevaluated_per_seed"] == recs[0]["per_seed"] and best["reevaluated_seeds"] == [1000, 1001]
    assert best["search_ci"] == [good.user_attrs["ci_low"], good.user_attrs["ci_high"]]
    assert [(c["trial_number"], c["search_objective"], c["reevaluated_objective"])
            for c in best["reevaluation"]["candidates"]] == [(1, lucky.value, recs[1]["value"]),
                                                             (0, good.value, recs[0]["value"])]
    assert study.user_attrs["reevaluation_winner"]["trial_number"] == 0
    assert "re-evaluation changed the winner: trial 0" in first.stdout
    assert "trial 0: 1.00" in first.stdout and "<- chosen" in first.stdout

    # trials.csv: the interval and per-seed scores of every trial, both scores of the candidates
    rows = {int(r["number"]): r for r in csv.DictReader((tmp_path / SWEEP / study.study_name / "trials.csv").open())}
    for t in trials:
        r = rows[t.number]
        assert float(r["ci_low"]) <= float(r["objective"]) <= float(r["ci_high"])
        assert json.loads(r["per_seed"]) == pytest.approx([t.value]) and json.loads(r["seeds"]) == [0]
    assert float(rows[1]["reevaluated_objective"]) == pytest.approx(recs[1]["value"])
    assert json.loads(rows[0]["reevaluated_per_seed"]) == pytest.approx(recs[0]["per_seed"])
    assert [r["chosen"] for _, r in sorted(rows.items())] == ["1", "", "", ""]
    assert rows[2]["reevaluated_objective"] == "" and rows[3]["reevaluation_state"] == ""
    assert (tmp_path / SWEEP / study.study_name / "plots" / "optimization_history.png").stat().st_size > 10_000

    # a rerun trains nothing; a larger top-k re-evaluates only the new candidate (plots checked above)
    args = [a for a in args if a != "hydra.sweeper.plots=true"]
    again = run_app_here(tmp_path, *args)
    assert "Launching" not in again.stdout
    more = run_app_here(tmp_path, *[a for a in args if "reevaluate_top_k" not in a], "search.reevaluate_top_k=3")
    assert more.stdout.count("Launching") == 1 and "re-evaluating trial" in more.stdout
    study = the_study(tmp_path)
    assert len(study.trials) == 4 and len(reevaluations(study)) == 3


def test_without_luck_the_search_best_is_confirmed(tmp_path):
    run_app_here(tmp_path, "search.n_trials=3", warm_starts(tmp_path), "search.reevaluate_top_k=2",
            "search.reevaluate_seeds=1", "toy.seed_noise=0.01")
    study = the_study(tmp_path)
    best = yaml.safe_load((tmp_path / SWEEP / "best_hparams.yaml").read_text())
    assert best["trial_number"] == study.best_trial.number == 0 and best["selected_by"] == "reevaluation"
    assert best["reevaluated_seeds"] == [1000] and len(best["reevaluated_per_seed"]) == 1


def test_failed_reevaluations_are_recorded_and_never_chosen(tmp_path):
    started = tmp_path / "started"
    args = ["search.n_trials=3", warm_starts(tmp_path), "search.reevaluate_top_k=3", "search.reevaluate_seeds=1",
            "hydra.sweeper.max_retries=1", "toy.fail_reevaluation_of=[0,1]", "toy.reevaluation_failure=[diverge,raise]",
            f"toy.started_dir={started}", *NOISY]
    done = run_app_here(tmp_path, *args)
    study = the_study(tmp_path)
    recs = reevaluations(study)
    assert recs[0]["state"] == "failed" and recs[0]["fail_reason"] == "diverged: loss is nan at step 2"
    assert recs[1]["state"] == "failed" and recs[1]["fail_reason"] == "RuntimeError: toy trial crashed on purpose"
    assert recs[2]["state"] == "complete"
    # a diverged run is final (unstable with a fresh seed); a crash is retried max_retries times
    starts = {p.name: len(p.read_text().splitlines()) for p in started.glob("reevaluation_*")}
    assert starts == {"reevaluation_0.started": 1, "reevaluation_1.started": 2, "reevaluation_2.started": 1}
    assert recs[1]["attempts"] == 2 and "toy trial crashed on purpose" in done.stdout
    # the only hyperparameters confirmed by a fresh seed win, though their search score is the lowest
    best = yaml.safe_load((tmp_path / SWEEP / "best_hparams.yaml").read_text())
    assert best["trial_number"] == 2 and best["selected_by"] == "reevaluation"
    rows = {int(r["number"]): r for r in csv.DictReader((tmp_path / SWEEP / study.study_name / "trials.csv").open())}
    assert rows[0]["reevaluation_state"] == "failed (diverged: loss is nan at step 2)"
    assert rows[0]["reevaluated_objective"] == "" and rows[2]["chosen"] == "1"
    again = run_app_here(tmp_path, *args)  # nothing left to run: failures that used their retries stay failed
    assert "Launching" not in again.stdout


# slow: resuming after a kill stays in the default suite for trials (test_sweeper.py); CI runs this
@pytest.mark.slow
def test_study_killed_during_reevaluation_resumes_only_the_missing_ones(tmp_path):
    started = tmp_path / "started"
    args = ["search.n_trials=3", "search.reevaluate_top_k=3", "search.reevaluate_seeds=1", "toy.sleep=0.3",
            f"toy.started_dir={started}", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *FAST, *args]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(started.glob("reevaluation_*.started"))) < 2:
            assert worker.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.4)  # in the middle of the second re-evaluation (4 steps of 0.3 s)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    study = the_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    states = sorted(r["state"] for r in reevaluations(study).values())
    assert states == ["complete", "running"]  # the killed one's claim is left behind
    killed = next(n for n, r in reevaluations(study).items() if r["state"] == "running")

    done = run_app_here(tmp_path, *args)
    study = the_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3  # no new search trial
    recs = reevaluations(study)
    assert sorted(recs) == [0, 1, 2] and all(r["state"] == "complete" and r["seeds"] == [1000] for r in recs.values())
    starts = {p.name: len(p.read_text().splitlines()) for p in started.glob("*.started")}
    # each search trial ran once; the re-evaluation that finished before the kill was not run again,
    # the killed one ran twice, the one never started ran once
    assert {k: v for k, v in starts.items() if k.startswith("trial_")} == {f"trial_{i}.started": 1 for i in range(3)}
    assert {k: v for k, v in starts.items() if k.startswith("reevaluation_")} == {
        f"reevaluation_{i}.started": 2 if i == killed else 1 for i in range(3)}
    assert f"re-evaluation of trial {killed} was lost" in done.stdout
    best = yaml.safe_load((tmp_path / SWEEP / "best_hparams.yaml").read_text())
    winner = max(recs, key=lambda n: recs[n]["value"])
    assert best["trial_number"] == winner and best["reevaluation"]["complete"] is True


def test_two_workers_share_the_reevaluation(tmp_path):
    started = tmp_path / "started"
    args = [*FAST, "search.n_trials=4", "search.reevaluate_top_k=4", "search.reevaluate_seeds=1", "toy.sleep=0.05",
            f"toy.started_dir={started}"]
    cmd = [sys.executable, str(APP), "-m", "search=autoft", *args]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=180)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    study = the_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    recs = reevaluations(study)
    assert sorted(recs) == [0, 1, 2, 3] and all(r["state"] == "complete" for r in recs.values())
    # each candidate was re-evaluated exactly once, by one worker or the other
    assert {p.name: len(p.read_text().splitlines()) for p in started.glob("reevaluation_*")} == {
        f"reevaluation_{i}.started": 1 for i in range(4)}


def test_reevaluation_settings_are_checked_before_any_training(tmp_path):
    done = run_app_here(tmp_path, "search.reevaluate_top_k=2", "seed=range(995,1005)", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stdout
    assert "include seeds the search used ([1000, 1001])" in done.stdout
    assert "search.reevaluate_seed_offset" in done.stdout
    done = run_app_here(tmp_path, "search.reevaluate_top_k=-1", check=False)
    assert done.returncode != 0 and "search.reevaluate_top_k=-1: must be an integer >= 0" in done.stdout
    done = run_app_here(tmp_path, "search.reevaluate_top_k=1", "search.reevaluate_seeds=0", check=False)
    assert "search.reevaluate_seeds=0: must be an integer >= 1" in done.stdout
    assert not (tmp_path / SWEEP / "optuna.db").exists()


# ------------------------------------------------------------------------------------------ train.py



def test_train_py_reevaluates_with_fresh_seeds(tmp_path):
    done = run_train(["-m", "search=autoft", "search.n_trials=2", "hydra.sweeper.plots=true", "search.bootstrap=50",
                      "search.reevaluate_top_k=2", "search.reevaluate_seeds=1", *TINY], tmp_path)
    assert done.returncode == 0, done.stdout[-6000:]
    sweep = tmp_path / "outputs/synthetic/tiny_vit/search-autoft"
    url = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    recs = reevaluations(study)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2 and sorted(recs) == [0, 1]
    for n, rec in recs.items():
        # what train.py computed with the fresh seed is what the record holds, interval included
        trial = json.loads((sweep / name / "reevaluation" / f"trial_{n}" / "trial.json").read_text())
        assert trial["seeds"] == [1000] and rec["seeds"] == [1000]
        assert rec["value"] == pytest.approx(trial["objective"]) and rec["per_seed"] == pytest.approx(trial["per_seed"])
        assert [rec["ci_low"], rec["ci_high"]] == pytest.approx(trial["ci"])
        assert rec["ci_low"] <= rec["value"] <= rec["ci_high"]
        assert trial["hparams"]["lr_scale"] == pytest.approx(study.trials[n].params["trainer.lr_scale"])
    rows = list(csv.DictReader((sweep / name / "trials.csv").open()))
    assert all(r["ci_low"] != "" and float(r["ci_low"]) <= float(r["objective"]) <= float(r["ci_high"]) for r in rows)
    assert (sweep / name / "plots" / "optimization_history.png").is_file()
    best = yaml.safe_load((sweep / "best_hparams.yaml").read_text())
    winner = max(recs, key=lambda n: (recs[n]["value"], study.trials[n].value, -n))  # ties: the better search score
    assert best["trial_number"] == winner and best["reevaluated_objective"] == pytest.approx(recs[winner]["value"])



# ------------------------------------------------------------------------------------------ report

def final_result(root, method, seed, hp, ood_val, tests):
    """A results.json as train.py phase=final writes it (the fields the tables read)."""
    path = root / method / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"id_val": {"accuracy": 0.9}, "ood_val": {"accuracy": ood_val}, "id_test": {"accuracy": 0.88},
               **{name: {"accuracy": v} for name, v in tests.items()}}
    path.write_text(json.dumps({"dataset": "toy", "model": "toy", "method": method, "seed": seed,
                                "objective_metric": "accuracy", "higher_is_better": True, "metrics": metrics,
                                "hparams": {"loss_weights": hp["loss_weights"], "lr_scale": hp["lr_scale"],
                                            "weight_decay": hp["weight_decay"], "source": "best_hparams.yaml"}}))


def test_selection_report_puts_the_four_scores_side_by_side(tmp_path):
    run_app_here(tmp_path, "search.n_trials=3", warm_starts(tmp_path), "search.reevaluate_top_k=2",
            "search.reevaluate_seeds=2", *NOISY)
    root = tmp_path / "outputs/toy/toy"
    best = yaml.safe_load((root / "search-autoft" / "best_hparams.yaml").read_text())
    assert best["trial_number"] == 0 and best["selected_by"] == "reevaluation"
    # two final seeds with the chosen hyperparameters, one autoft run with other ones (not counted), and FT
    final_result(root, "autoft", 0, best, 0.70, {"snow": 0.60, "fog": 0.50})
    final_result(root, "autoft", 1, best, 0.72, {"snow": 0.64, "fog": 0.52})
    final_result(root, "autoft", 2, {**best, "weight_decay": 0.9}, 0.10, {"snow": 0.10, "fog": 0.10})
    final_result(root, "ft", 0, {**best, "lr_scale": 1.0}, 0.50, {"snow": 0.40, "fog": 0.30})
    done = run_script("make_tables", [root, "--no-plots"])
    assert done.returncode == 0, done.stdout
    (entry,) = json.loads((root / "selection_report.json").read_text())
    assert entry["trial_number"] == 0 and entry["final_seeds"] == [0, 1]
    assert entry["trial_score"] == best["objective"] and entry["reevaluated_score"] == best["reevaluated_objective"]
    assert entry["final_ood_val"]["mean"] == pytest.approx(0.71)
    assert entry["ood_tests"]["snow"]["mean"] == pytest.approx(0.62) and entry["ood_tests"]["fog"]["mean"] == pytest.approx(0.51)
    assert entry["ood_mean"]["mean"] == pytest.approx(0.565)
    assert entry["val_to_test_gap"]["mean"] == pytest.approx(0.71 - 0.565)
    assert entry["other_runs"] == [str(root / "autoft" / "seed2" / "results.json")]

    md = (root / "selection_report.md").read_text()
    lines = md.splitlines()
    head = next(line for line in lines if line.startswith("| Study / trial"))
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "Study / trial", "chosen by", "trial score (search)", "re-evaluated", "final OOD-val", "snow", "fog",
        "OOD test mean", "val-to-test gap", "final seeds"]
    row = next(line for line in lines if line.startswith(f"| {best['study_name']} / 0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    lo, hi = best["search_ci"]
    re_lo, re_hi = best["reevaluated_ci"]
    assert cells[1:] == ["reevaluation", f"{100 * best['objective']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                         f"{100 * best['reevaluated_objective']:.1f} [{100 * re_lo:.1f}, {100 * re_hi:.1f}] (2 seeds)",
                         "71.0 ± 1.4", "62.0 ± 2.8", "51.0 ± 1.4", "56.5 ± 2.1", "14.5 ± 0.7", "2"]
    assert "Top-2 re-evaluation" in md and "| 1 | 164.6 |" in md  # the lucky trial's two scores
    assert "seed2/results.json" in md  # the run with other hyperparameters is named, not averaged in
    assert "selection_report.md" in done.stdout and "| Study / trial" in done.stdout


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_selection_follows_the_reevaluated_mean_in_either_direction(direction):
    from autoft.search import reevaluation as rv

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    sign = 1 if direction == "maximize" else -1
    for v in (0.5, 0.9, 0.7, 0.1):  # search scores (sign-flipped when minimising): trial 1 best, then 2, 0
        study.add_trial(optuna.trial.create_trial(value=sign * v, params={"x": v},
                                                  distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    plan = rv.Plan(top_k=3, n_seeds=1, direction=direction, max_retries=2)
    assert plan.seeds == [1000] and [t.number for t in rv.candidates(study.trials, direction, 3)] == [1, 2, 0]
    pending = rv.select(study.trials, {}, plan)
    assert pending.winner.number == 1 and pending.selected_by == "search" and not pending.complete
    assert "pending (0/3" in pending.note
    claim = {n: rv.claim_record(study.trials[n], plan, None) for n in (0, 1, 2)}
    recs = {0: rv.result_record(claim[0], sign * 0.8, {}, 1.0), 1: rv.result_record(claim[1], sign * 0.2, {}, 1.0),
            2: rv.failed_record(claim[2], "diverged", "diverged: nan")}
    sel = rv.select(study.trials, recs, plan)
    assert sel.complete and sel.selected_by == "reevaluation" and sel.winner.number == 0
    assert sel.search_best.number == 1 and "changed the winner: trial 0" in sel.note
    assert recs[0]["per_seed"] == [sign * 0.8]  # one seed: its score is the mean
    # records made with other seeds (another reevaluate_seeds) do not count for these seeds
    assert not rv.select(study.trials, recs, rv.Plan(top_k=3, n_seeds=2, direction=direction)).complete
