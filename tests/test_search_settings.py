"""The sweeper's settings: one schema (autoft.search.settings) the plugin registers, one check."""
import pytest

from autoft.errors import UserError
from autoft.search.settings import SearchSettings, checked


def test_the_plugin_registers_the_search_settings_with_their_defaults():
    from hydra_plugins.autoft_optuna_sweeper.config import AutoFTOptunaSweeperConf

    conf = AutoFTOptunaSweeperConf()
    assert isinstance(conf, SearchSettings) and conf.n_trials == SearchSettings().n_trials == 20
    assert conf._target_.endswith("AutoFTOptunaSweeper")
    assert checked({"n_trials": 5, "progress_interval": None}).progress_interval == 0.0


def test_every_bad_setting_is_named_in_one_message_in_the_config_wording():
    with pytest.raises(UserError) as err:
        checked({"n_trials": 0, "grace_period": 20, "max_failure_rate": 2, "threads": "many",
                 "direction": ["maximize", "up"], "storage_outage_window": 0})
    text = str(err.value)
    assert text.startswith("invalid config:\n  - hydra.sweeper.n_trials=0: must be an integer >= 1")
    for line in ("hydra.sweeper.grace_period=20: must be more than heartbeat_interval (20)",
                 "hydra.sweeper.max_failure_rate=2: must be null (off) or a number in [0, 1]",
                 "hydra.sweeper.threads=many: must be auto, a positive integer or null",
                 "hydra.sweeper.direction=[maximize,up]: must be maximize, minimize",
                 "hydra.sweeper.storage_outage_window=0: must be a number of seconds > 0"):
        assert line in text
    with pytest.raises(UserError, match=r"^invalid config: hydra.sweeper.n_jobs=0: must be an integer >= 1$"):
        checked({"n_jobs": 0})
