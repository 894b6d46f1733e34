"""The record files' one home (autoft.records): what is written reads back the same, and a missing
or torn file reads as the callers expect (a trial: nothing; a results file: one error naming it)."""
import pytest
import yaml

from autoft.errors import UserError
from autoft.hparams import Hyperparameters
from autoft.records import (HPARAMS_FILE, RESULTS_FILE, TRIAL_FILE, ResultsError, read_best_hparams,
                            read_results, read_trial, read_yaml, write_best_hparams, write_results, write_trial)
from autoft.search.study import load_warm_starts


def test_trial_and_results_records_read_back_as_written(tmp_path):
    trial = {"objective": 0.61, "per_seed": [0.6, 0.62], "seeds": [0, 1], "ci": [0.58, 0.64],
             "hparams": {"lr": 1e-5, "loss_weights": {"ce": 1.0}}}
    assert write_trial(tmp_path / "t", trial) == tmp_path / "t" / TRIAL_FILE
    assert read_trial(tmp_path / "t" / TRIAL_FILE) == trial
    results = {"dataset": "d", "model": "m", "method": "ft", "seed": 0, "metrics": {"id_test": {"accuracy": 0.9}}}
    assert write_results(tmp_path / "r", results) == tmp_path / "r" / RESULTS_FILE
    assert read_results(tmp_path / "r" / RESULTS_FILE) == results


def test_a_missing_or_torn_trial_reads_as_none_and_a_bad_results_file_names_itself(tmp_path):
    assert read_trial(tmp_path / TRIAL_FILE) is None
    (tmp_path / TRIAL_FILE).write_text('{"objective": 0.6, "per_')  # killed while writing
    assert read_trial(tmp_path / TRIAL_FILE) is None
    with pytest.raises(ResultsError, match=f"{tmp_path / RESULTS_FILE}: missing"):
        read_results(tmp_path / RESULTS_FILE)
    (tmp_path / RESULTS_FILE).write_text("{not json")
    with pytest.raises(ResultsError, match="corrupt JSON .*rerun the final run"):
        read_results(tmp_path / RESULTS_FILE)


def test_best_hparams_round_trip_and_header(tmp_path):
    chosen = Hyperparameters(loss_weights={"dcm": 0.5}, lr_scale=2.0, weight_decay=0.1, wise_alpha=0.75,
                             records={"study_name": "s", "trial_number": 3, "objective": 0.7, "metric": "accuracy"})
    path = write_best_hparams(tmp_path / HPARAMS_FILE, chosen)
    text = path.read_text()
    assert text.startswith("# Best hyperparameters of study s (trial 3, accuracy 0.7 on OOD-val).\n")
    assert "method=autoft method.name=autoft_alpha hparams=<this file>" in text
    back = read_best_hparams(path)
    assert back == chosen and back.records == chosen.records
    # values alone (no search behind them): the header is the final run's command only
    plain = write_best_hparams(tmp_path / "plain.yaml", Hyperparameters(lr_scale=3.0))
    assert plain.read_text().startswith("# Final retrain: python train.py method=autoft ")
    assert yaml.safe_load(plain.read_text())["lr_scale"] == 3.0


def test_hyperparameter_files_that_cannot_be_read_name_the_key_and_the_file(tmp_path):
    with pytest.raises(UserError, match=r"hparams=.*nowhere.yaml: file not found; pass the best_hparams.yaml"):
        read_best_hparams(tmp_path / "nowhere.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(UserError, match=r"^hydra.sweeper.warm_start: .*bad.yaml: not a readable YAML file"):
        load_warm_starts([str(tmp_path / "bad.yaml")], None)
    with pytest.raises(UserError, match="where: file not found; fix"):
        read_yaml(tmp_path / "missing.yaml", "where", "fix")


def test_json_records_write_tensors_and_arrays_as_their_numbers(tmp_path):
    """autoft.io.write_json, under every record: a metric computed with torch or numpy is written as
    the number or list it holds, whatever its size (a scalar, a per-class vector, a matrix)."""
    import json

    import numpy as np
    import torch

    from autoft.io import write_json

    path = tmp_path / "r.json"
    write_json(path, {"acc": torch.tensor(0.25), "f1": np.float64(0.5), "per_class": torch.tensor([1, 2, 3]),
                      "confusion": np.array([[1, 0], [2, 3]]), "path": tmp_path})
    assert json.loads(path.read_text()) == {"acc": 0.25, "f1": 0.5, "per_class": [1, 2, 3],
                                            "confusion": [[1, 0], [2, 3]], "path": str(tmp_path)}
