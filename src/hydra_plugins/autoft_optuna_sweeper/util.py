"""Small helpers shared by the sweeper's modules (kept free of heavy imports: Hydra imports every
module of this package on each run to discover plugins)."""
from typing import Any

from omegaconf import OmegaConf


def plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def is_lost_job(err: BaseException) -> bool:
    # submitit raises these when the cluster killed, preempted or timed out the job
    return type(err).__module__.startswith("submitit") and type(err).__name__ in (
        "UncompletedJobError", "FailedJobError", "FailedSubmissionError")
