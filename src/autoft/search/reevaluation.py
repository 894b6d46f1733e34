"""Top-k re-evaluation: guard the choice of hyperparameters against selection noise.

The best of hundreds of trials on a small OOD-val set is partly the luckiest. Once the study has
its `n_trials` finished trials, the k best trials' hyperparameters are re-run (`search.reevaluate_top_k`)
with `search.reevaluate_seeds` fresh seeds, and the winner written to best_hparams.yaml is the best
by the re-evaluated mean. Both scores are kept: the trial's search score and its re-evaluated score.

Fresh seeds: `seed + search.reevaluate_seed_offset + j` (j < reevaluate_seeds), the same for every
candidate (common random numbers: the candidates are compared on equal terms) and disjoint from
every seed the search used (checked before anything runs).

Where the results live (the design): one study user attribute per re-evaluated trial,
`reevaluation:<trial number>` = {state, seeds, value, per_seed, ci, search_value, worker, ...}.
- Not as attributes of the original trials: Optuna refuses to change a finished trial.
- Not as extra trials of the study: they would count toward n_trials, feed the sampler, and compete
  for `study.best_trial` everywhere the study is read (dashboard, notebook, tables).
- So the study holds exactly its search trials, and a re-evaluation is a keyed, idempotent record:
  running the same (trial, seeds) twice rewrites the same record, never adds a second one.
Resume and several workers: a worker claims a record under the study's claim lock (state `running`,
its worker tag and a heartbeat timestamp that a liveness.Heartbeat refreshes through refresh_claim); another worker takes over a claim
whose heartbeat is older than the grace period (the owner was killed), so a study killed during
re-evaluation, rerun, runs only the re-evaluations that are missing. Storages without a claim lock
may at worst run one re-evaluation twice (the same record is written twice).
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from autoft.errors import UserError

log = logging.getLogger(__name__)

RECORD_PREFIX = "reevaluation:"
WINNER_ATTR = "reevaluation_winner"  # study attribute: the chosen trial once every candidate is done
RUNNING, COMPLETE, FAILED, RELEASED = "running", "complete", "failed", "released"
# a failed re-evaluation of these kinds is final (the hyperparameters are unstable with fresh seeds);
# 'error' (the task raised) is retried up to the sweeper's max_retries
FINAL_FAILURES = ("diverged", "nan")


@dataclass(frozen=True)
class Settings:
    top_k: int = 0
    n_seeds: int = 2
    seed_offset: int = 1000

    @property
    def enabled(self) -> bool:
        return self.top_k > 0


def settings_from(search: Optional[Mapping]) -> Settings:
    """`search.reevaluate_top_k`, `search.reevaluate_seeds`, `search.reevaluate_seed_offset`."""
    search = search or {}
    values = {}
    for key, attr, low, default in (("reevaluate_top_k", "top_k", 0, 0), ("reevaluate_seeds", "n_seeds", 1, 2),
                                    ("reevaluate_seed_offset", "seed_offset", 1, 1000)):
        v = search.get(key, default)
        v = default if v is None else v
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"search.{key} must be an integer >= {low}, got {v!r}")
        values[attr] = v
    return Settings(**values)


def fresh_seeds(base_seed: int, settings: Settings) -> list[int]:
    return [int(base_seed) + settings.seed_offset + j for j in range(settings.n_seeds)]


def check_fresh(fresh: Sequence[int], search_seeds: Optional[set]) -> None:
    """The re-evaluation seeds must be new to the search (else it re-runs a lucky seed)."""
    if search_seeds is None:
        return
    clash = sorted(set(fresh) & set(search_seeds))
    if clash:
        raise UserError(f"re-evaluation seeds {list(fresh)} include seeds the search used ({clash}); raise "
                        "search.reevaluate_seed_offset above the largest searched seed")


def search_seeds(base_seed: int, seeds_per_trial: int, distribution=None) -> set:
    """Every seed an inner run of the search can use: seed..seed+k-1, over the searched seeds if any."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    starts = {int(base_seed)}
    if isinstance(distribution, IntDistribution):
        starts = set(range(distribution.low, distribution.high + 1, distribution.step))
    elif isinstance(distribution, CategoricalDistribution):
        starts = {int(c) for c in distribution.choices if isinstance(c, (int, float))}
    return {s + i for s in starts for i in range(max(int(seeds_per_trial), 1))}


# ----------------------------------------------------------------------------- records

def records(study) -> dict[int, dict]:
    """trial number -> its re-evaluation record (any state)."""
    from autoft.search.storage import StudyStorage

    out = {}
    for key, value in StudyStorage(study).study_records(RECORD_PREFIX).items():
        if isinstance(value, dict):
            try:
                out[int(key)] = value
            except ValueError:
                continue
    return out


def write_record(study, number: int, record: Mapping[str, Any]) -> None:
    from autoft.search.storage import StudyStorage

    StudyStorage(study).write_study_record(f"{RECORD_PREFIX}{int(number)}", dict(record))


def same_seeds(record: Optional[Mapping], seeds: Sequence[int]) -> bool:
    return record is not None and list(record.get("seeds") or []) == list(seeds)


def is_done(record: Optional[Mapping], seeds: Sequence[int], max_retries: int) -> bool:
    """Complete, or failed for good, with these seeds."""
    if not same_seeds(record, seeds):
        return False
    if record.get("state") == COMPLETE:
        return True
    return record.get("state") == FAILED and (record.get("fail_kind") in FINAL_FAILURES
                                              or int(record.get("attempts", 1)) > max_retries)


def is_live(record: Optional[Mapping], seeds: Sequence[int], grace_period: float, now: Optional[float] = None) -> bool:
    """Running elsewhere with a recent heartbeat (a killed worker's claim goes stale)."""
    if not same_seeds(record, seeds) or record.get("state") != RUNNING:
        return False
    now = time.time() if now is None else now
    return now - float(record.get("heartbeat", 0.0)) <= grace_period


def candidates(trials: Sequence, direction: str, top_k: int) -> list:
    """The top_k COMPLETE trials, best first (ties: the earlier trial)."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:top_k]


@dataclass
class Selection:
    """The chosen trial and how it was chosen."""

    winner: Any  # optuna FrozenTrial, or None (no complete trial)
    selected_by: str  # search | reevaluation
    search_best: Any
    candidates: list = field(default_factory=list)  # [(trial, record or None)], best search score first
    seeds: list = field(default_factory=list)
    complete: bool = False  # every candidate re-evaluated (or failed for good)
    note: str = ""

    @property
    def winner_record(self) -> Optional[dict]:
        for t, rec in self.candidates:
            if self.winner is not None and t.number == self.winner.number:
                return rec
        return None

    def summary(self) -> dict:
        """JSON-able: what best_hparams.yaml and the study attribute hold."""
        def entry(t, rec):
            e = {"trial_number": int(t.number), "search_objective": float(t.value)}
            if rec is not None:
                e["state"] = rec.get("state")
                if rec.get("state") == COMPLETE:
                    e["reevaluated_objective"] = float(rec["value"])
                    if rec.get("per_seed") is not None:
                        e["reevaluated_per_seed"] = [float(x) for x in rec["per_seed"]]
                elif rec.get("state") == FAILED:
                    e["fail_reason"] = rec.get("fail_reason", "")
            else:
                e["state"] = "pending"
            return e

        return {"selected_by": self.selected_by, "complete": self.complete, "seeds": list(self.seeds),
                "top_k": len(self.candidates), "note": self.note,
                "candidates": [entry(t, rec) for t, rec in self.candidates]}


def select(trials: Sequence, study_records: Mapping[int, dict], direction: str, settings: Settings,
           seeds: Sequence[int], max_retries: int) -> Selection:
    """The winner: by the re-evaluated mean once every top-k candidate is done, else by the search."""
    ranked = candidates(trials, direction, max(settings.top_k, 1))
    search_best = ranked[0] if ranked else None
    if not settings.enabled or search_best is None:
        return Selection(search_best, "search", search_best, complete=not settings.enabled)
    cands = [(t, study_records.get(t.number) if same_seeds(study_records.get(t.number), seeds) else None)
             for t in ranked]
    complete = all(is_done(rec, seeds, max_retries) for _, rec in cands)
    sel = Selection(search_best, "search", search_best, cands, list(seeds), complete)
    if not complete:
        done = sum(is_done(rec, seeds, max_retries) for _, rec in cands)
        sel.note = f"re-evaluation pending ({done}/{len(cands)} candidates done): chosen on the search score"
        return sel
    scored = [(t, rec) for t, rec in cands if rec.get("state") == COMPLETE]
    if not scored:
        sel.note = "every re-evaluation failed: chosen on the search score"
        return sel
    sign = -1.0 if direction == "maximize" else 1.0
    # ties keep the better search score (candidates are ranked by it)
    best_t, best_rec = min(scored, key=lambda tr: sign * float(tr[1]["value"]))
    sel.winner, sel.selected_by = best_t, "reevaluation"
    if best_t.number != search_best.number:
        sel.note = (f"re-evaluation changed the winner: trial {best_t.number} (re-evaluated {best_rec['value']:.6g}) "
                    f"over trial {search_best.number} (search {search_best.value:.6g})")
    return sel


def chosen_trial_number(study) -> Optional[int]:
    """The trial a finished re-evaluation chose (None: no re-evaluation, or not finished): readers of
    the storage should prefer it to `study.best_trial`, which ranks by the search score."""
    winner = study.user_attrs.get(WINNER_ATTR)
    return int(winner["trial_number"]) if isinstance(winner, dict) and "trial_number" in winner else None


# ----------------------------------------------------------------------------- claims

def refresh_claim(study, number: int, token: str) -> bool:
    """One beat of a running claim (autoft.search.liveness.Heartbeat calls it); False once the claim
    was taken over (declared lost) or finished: the beat then stops and leaves the record alone."""
    current = records(study).get(number)
    if not current or current.get("token") != token or current.get("state") != RUNNING:
        return False
    write_record(study, number, {**current, "heartbeat": time.time()})
    return True


def claim_record(trial, seeds: Sequence[int], worker: str, previous: Optional[Mapping]) -> dict:
    # a lost or released run does not use up an attempt; a failed one already counted itself
    attempts = int(previous.get("attempts", 0)) if same_seeds(previous, seeds) else 0
    return {"state": RUNNING, "seeds": list(seeds), "search_value": float(trial.value), "worker": worker,
            "token": uuid.uuid4().hex, "heartbeat": time.time(), "started": time.time(), "attempts": attempts,
            "params": dict(trial.params)}


def next_claim(trials: Sequence, study_records: Mapping[int, dict], direction: str, settings: Settings,
               seeds: Sequence[int], max_retries: int, grace_period: float):
    """(candidate to run now or None, how many run elsewhere, whether any was taken over)."""
    live, stale = 0, False
    for t in candidates(trials, direction, settings.top_k):
        rec = study_records.get(t.number)
        if is_done(rec, seeds, max_retries):
            continue
        if is_live(rec, seeds, grace_period):
            live += 1
            continue
        stale = stale or (same_seeds(rec, seeds) and rec.get("state") == RUNNING)
        return t, live, stale
    return None, live, stale


def result_record(claim: Mapping, value: float, trial_json: Optional[Mapping], seconds: float) -> dict:
    """The finished re-evaluation: the job's objective plus what its trial.json holds (per seed, CI)."""
    rec = {k: v for k, v in claim.items() if k not in ("token", "heartbeat")}
    rec.update(state=COMPLETE, value=float(value), seconds=round(float(seconds), 3), finished=time.time())
    per_seed = (trial_json or {}).get("per_seed")
    if per_seed is None and len(claim["seeds"]) == 1:
        per_seed = [float(value)]
    if per_seed is not None:
        rec["per_seed"] = [float(x) for x in per_seed]
    ci = (trial_json or {}).get("ci")
    if ci is not None and len(ci) == 2 and all(math.isfinite(float(x)) for x in ci):
        rec["ci_low"], rec["ci_high"] = float(ci[0]), float(ci[1])
    return rec


def failed_record(claim: Mapping, kind: str, reason: str) -> dict:
    rec = {k: v for k, v in claim.items() if k not in ("token", "heartbeat")}
    rec.update(state=FAILED, fail_kind=kind, fail_reason=reason[:2000], attempts=int(claim.get("attempts", 0)) + 1,
               finished=time.time())
    return rec


def released_record(claim: Mapping) -> dict:
    rec = {k: v for k, v in claim.items() if k not in ("token", "heartbeat")}
    rec["state"] = RELEASED
    return rec
