"""Top-k re-evaluation, a step after the search (DomainBed's sweep-then-collect): read the complete
study, re-run its k best trials with fresh seeds, choose on the re-evaluated mean. The app asks for
it and says how a run takes its seeds (autoft.search.app.SearchApp); a plain Hydra app has none.

    plan = app.reevaluation(space, direction, max_retries)  # the app's Plan, before any training
    reevaluation.reevaluate(search)       # Search.run, in each slot, once the sweep loop completed the study
    sel, recs = reevaluation.selection(study, plan)  # the chosen trial and the records: what the outputs show

The best of hundreds of trials on a small OOD-val set is partly the luckiest. The fresh seeds,
`base_seed + seed_offset + j` (j < n_seeds), are the same for every
candidate (compared on equal terms) and disjoint from every seed the search used. A re-evaluation
that diverges or returns NaN fails for good (never chosen); one that raises is retried up to
hydra.sweeper.max_retries times.

Records: a study user attribute per candidate, `reevaluation:<trial number>` = {state, seeds, value,
per_seed, ci_low, ci_high, search_value, attempts, worker, ...}, and `reevaluation_winner` once all
are done. Not trial attributes (Optuna refuses to change a finished trial), not extra trials (they
would count toward n_trials, feed the sampler and compete for `study.best_trial`); re-running a
(trial, seeds) rewrites its record. A record is claimed under the study's claim lock (state
`running`, a token, a heartbeat time a liveness.Heartbeat refreshes); a claim silent for the grace
period (its worker was killed) is taken over, and a worker that stops releases its claims. So a
rerun runs only the missing ones, and each candidate runs once however many workers share the
step (storages without a claim lock: at worst twice, writing the same record).
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from autoft.search import liveness as lv
from autoft.search import outage as og
from autoft.search.space import format_value
from autoft.search.storage import StudyStorage

log = logging.getLogger("hydra_plugins.autoft_optuna_sweeper.sweeper")  # the search's one logger

RECORD_PREFIX = "reevaluation:"
WINNER_ATTR = "reevaluation_winner"  # study attribute: the chosen trial once every candidate is done
RUNNING, COMPLETE, FAILED, RELEASED = "running", "complete", "failed", "released"
FINAL_FAILURES = ("diverged", "nan")  # unstable with a fresh seed: not retried
STOPS = ("user_error", "storage", "bad_return", "launcher")  # outcomes that stop the search


@dataclass(frozen=True)
class Plan:
    top_k: int = 0
    n_seeds: int = 2
    seed_offset: int = 1000
    base_seed: int = 0
    direction: str = "maximize"
    max_retries: int = 2  # hydra.sweeper.max_retries: tries of a re-evaluation that raised

    @property
    def enabled(self) -> bool:
        return self.top_k > 0

    @property
    def seeds(self) -> list[int]:
        return [self.base_seed + self.seed_offset + j for j in range(self.n_seeds)]


def search_seeds(base_seed: int, seeds_per_trial: int, distribution=None) -> set:
    """Every seed an inner run of the search can use: seed..seed+k-1, over the searched seeds if any."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    starts = {int(base_seed)}
    if isinstance(distribution, IntDistribution):
        starts = set(range(distribution.low, distribution.high + 1, distribution.step))
    elif isinstance(distribution, CategoricalDistribution):
        starts = {int(c) for c in distribution.choices if isinstance(c, (int, float))}
    return {s + i for s in starts for i in range(max(int(seeds_per_trial), 1))}


def overrides(search, params: Mapping, number: int) -> list[str]:
    """The re-evaluation of trial `number`: its hyperparameters, the app's fresh seeds
    (SearchApp.reevaluation_overrides, which replace the trial's own values of their keys), no trial
    identity (it is not a search trial: nothing reports to the study from inside it)."""
    own = search.app.reevaluation_overrides(search.reeval.seeds, number)
    replaced = {_key(o) for o in own}
    ovs = [*search.passthrough, *search.space.overrides(params)]
    return [*(o for o in ovs if _key(o) not in replaced), f"hydra.sweep.dir={format_value(str(search.study_dir))}",
            f"hydra.sweep.subdir=reevaluation/trial_{number}", *own]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


# ----------------------------------------------------------------------------- records, the choice

def records(study) -> dict[int, dict]:
    """trial number -> its re-evaluation record (any state)."""
    recs = StudyStorage(study).study_records(RECORD_PREFIX)
    return {int(k): v for k, v in recs.items() if k.isdigit() and isinstance(v, dict)}


def write_record(study, number: int, record: Mapping[str, Any]) -> None:
    StudyStorage(study).write_study_record(f"{RECORD_PREFIX}{int(number)}", dict(record))


def same_seeds(record: Optional[Mapping], seeds: Sequence[int]) -> bool:
    return record is not None and list(record.get("seeds") or []) == list(seeds)


def is_done(record: Optional[Mapping], plan: Plan) -> bool:
    """Complete, or failed for good, with the plan's seeds."""
    if not same_seeds(record, plan.seeds):
        return False
    return record.get("state") == COMPLETE or record.get("state") == FAILED and (
        record.get("fail_kind") in FINAL_FAILURES or int(record.get("attempts", 1)) > plan.max_retries)


def candidates(trials: Sequence, direction: str, top_k: int) -> list:
    """The top_k COMPLETE trials, best first (ties: the earlier trial)."""
    from optuna.trial import TrialState

    sign = -1.0 if direction == "maximize" else 1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
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
        return next((rec for t, rec in self.candidates if self.winner is not None and t.number == self.winner.number),
                    None)

    def summary(self) -> dict:
        """JSON-able: what best_hparams.yaml and the study attribute hold."""
        def entry(t, rec):
            e = {"trial_number": int(t.number), "search_objective": float(t.value),
                 "state": rec.get("state") if rec is not None else "pending"}
            if e["state"] == COMPLETE:
                e["reevaluated_objective"] = float(rec["value"])
                if rec.get("per_seed") is not None:
                    e["reevaluated_per_seed"] = [float(x) for x in rec["per_seed"]]
            elif e["state"] == FAILED:
                e["fail_reason"] = rec.get("fail_reason", "")
            return e

        return {"selected_by": self.selected_by, "complete": self.complete, "seeds": list(self.seeds),
                "top_k": len(self.candidates), "note": self.note,
                "candidates": [entry(t, rec) for t, rec in self.candidates]}


def select(trials: Sequence, study_records: Mapping[int, dict], plan: Plan) -> Selection:
    """The winner: by the re-evaluated mean once every top-k candidate is done, else by the search."""
    ranked = candidates(trials, plan.direction, max(plan.top_k, 1))
    search_best = ranked[0] if ranked else None
    if not plan.enabled or search_best is None:
        return Selection(search_best, "search", search_best, complete=not plan.enabled)
    seeds = plan.seeds
    cands = [(t, study_records.get(t.number) if same_seeds(study_records.get(t.number), seeds) else None)
             for t in ranked]
    done = sum(is_done(rec, plan) for _, rec in cands)
    sel = Selection(search_best, "search", search_best, cands, seeds, done == len(cands))
    scored = [(t, rec) for t, rec in cands if rec is not None and rec.get("state") == COMPLETE]
    if not sel.complete or not scored:
        sel.note = (f"re-evaluation pending ({done}/{len(cands)} candidates done): chosen on the search score"
                    if not sel.complete else "every re-evaluation failed: chosen on the search score")
        return sel
    sign = -1.0 if plan.direction == "maximize" else 1.0
    best_t, best_rec = min(scored, key=lambda tr: sign * float(tr[1]["value"]))  # ties: the better search score
    sel.winner, sel.selected_by = best_t, "reevaluation"
    if best_t.number != search_best.number:
        sel.note = (f"re-evaluation changed the winner: trial {best_t.number} (re-evaluated {best_rec['value']:.6g}) "
                    f"over trial {search_best.number} (search {search_best.value:.6g})")
    return sel


def selection(study, plan: Plan):
    """(Selection, the records or None: no re-evaluation columns) of a single-objective study."""
    recs = records(study) if plan.enabled else None
    return select(study.get_trials(deepcopy=False), recs or {}, plan), recs


def record_winner(study, sel: Selection) -> None:
    """The chosen trial as a study attribute once every candidate is done (None while pending)."""
    winner = {"trial_number": int(sel.winner.number), **sel.summary()} if sel.complete and sel.winner else None
    if study.user_attrs.get(WINNER_ATTR) != winner:
        study.set_user_attr(WINNER_ATTR, winner)


def chosen_trial_number(study) -> Optional[int]:
    """The trial a finished re-evaluation chose (None: no re-evaluation, or not finished): readers of
    the storage should prefer it to `study.best_trial`, which ranks by the search score."""
    winner = study.user_attrs.get(WINNER_ATTR)
    return int(winner["trial_number"]) if isinstance(winner, dict) and "trial_number" in winner else None


def log_summary(sel: Selection, plan: Plan) -> None:
    log.info("top-%d re-evaluation with seeds %s (trial: search score -> re-evaluated mean):", plan.top_k,
             ", ".join(map(str, plan.seeds)))
    for e in sel.summary()["candidates"]:
        after = (f"{e['reevaluated_objective']:.6g}" if "reevaluated_objective" in e
                 else e["state"] + (f" ({e['fail_reason']})" if e.get("fail_reason") else ""))
        mark = "  <- chosen" if sel.winner is not None and e["trial_number"] == sel.winner.number else ""
        log.info("  trial %d: %.6g -> %s%s", e["trial_number"], e["search_objective"], after, mark)
    if sel.note:
        log.info("%s", sel.note)


# ----------------------------------------------------------------------------- claims

def claim_record(trial, plan: Plan, previous: Optional[Mapping]) -> dict:
    """A running claim; a lost or released run does not use up an attempt (a failed one counted itself)."""
    now = time.time()
    attempts = int(previous.get("attempts", 0)) if same_seeds(previous, plan.seeds) else 0
    return {"state": RUNNING, "seeds": plan.seeds, "search_value": float(trial.value), "worker": lv.pid_tag(),
            "token": uuid.uuid4().hex, "heartbeat": now, "started": now, "attempts": attempts,
            "params": dict(trial.params)}


def refresh_claim(study, number: int, token: str) -> bool:
    """One beat of a running claim (a liveness.Heartbeat calls it); False once the claim was taken
    over or finished: the beat then stops and leaves the record alone."""
    current = records(study).get(number)
    if not current or current.get("token") != token or current.get("state") != RUNNING:
        return False
    write_record(study, number, {**current, "heartbeat": time.time()})
    return True


def ended(claim: Mapping, state: str, **fields) -> dict:
    """The claim's record once its run ended: `state` and what the run found."""
    return {**{k: v for k, v in claim.items() if k not in ("token", "heartbeat")}, "state": state, **fields}


def result_record(claim: Mapping, value: float, scores: Mapping, seconds: float) -> dict:
    """A complete re-evaluation: its objective, and from its trial.json (`scores`) the per-seed scores and CI."""
    per_seed = scores.get("per_seed") or ([value] if len(claim["seeds"]) == 1 else None)
    ci = scores.get("ci")
    rec = ended(claim, COMPLETE, value=float(value), seconds=round(float(seconds), 3), finished=time.time())
    if per_seed is not None:
        rec["per_seed"] = [float(x) for x in per_seed]
    if ci is not None and len(ci) == 2 and all(math.isfinite(float(x)) for x in ci):
        rec["ci_low"], rec["ci_high"] = float(ci[0]), float(ci[1])
    return rec


def failed_record(claim: Mapping, kind: str, reason: str) -> dict:
    return ended(claim, FAILED, fail_kind=kind, fail_reason=reason[:2000],
                 attempts=int(claim.get("attempts", 0)) + 1, finished=time.time())


# ----------------------------------------------------------------------------- the step

def reevaluate(search) -> None:
    """Claim and run the missing re-evaluations of `search`'s complete study until none is left; then
    wait for those running elsewhere (a lost one is taken over after the grace period). `search`: the
    autoft.search.run.Search (one call per slot): its storage and claim lock, its launch and classify
    (launch_job), its stop event and its outputs."""
    study, s, plan = search.study, search.s, search.reeval
    announced = False
    while not search.stopping.is_set():
        with search.store.claim_lock(search.storage_url):
            recs, live, now = records(study), 0, time.time()
            grace = lv.grace_after_outage(search.store, s.grace_period)
            for trial in candidates(study.get_trials(deepcopy=False), plan.direction, plan.top_k):
                rec = recs.get(trial.number) if same_seeds(recs.get(trial.number), plan.seeds) else None
                if is_done(rec, plan):
                    continue
                lost = rec is not None and rec.get("state") == RUNNING
                if lost and now - float(rec.get("heartbeat", 0.0)) <= grace:
                    live += 1  # running elsewhere, its heartbeat recent
                    continue
                claim = claim_record(trial, plan, rec)
                write_record(study, trial.number, claim)
                break
            else:
                trial = None
        if trial is None:
            if not live:
                return
            announced = search.wait(announced, "re-evaluation: %d running elsewhere: waiting for them (a lost one "
                                     "is taken over %ds after its last heartbeat)", live, s.grace_period)
            continue
        if lost:
            log.warning("re-evaluation of trial %d was lost (no heartbeat): running it again", trial.number)
        log.info("re-evaluating trial %d (search %.6g) with seeds %s", trial.number, trial.value,
                 ", ".join(map(str, plan.seeds)))
        _run(search, trial, claim)


def _run(search, trial, claim: dict) -> None:
    """One claimed re-evaluation: launch, classify (autoft.search.outcome), record; its heartbeat meanwhile."""
    study, n, t0 = search.study, trial.number, time.time()
    heartbeat = lv.Heartbeat(lambda: refresh_claim(study, n, claim["token"]), search.s.heartbeat_interval,
                             name=f"autoft-reeval-heartbeat-{n}").start(beat_now=False)
    release = lambda: _finish(search, n, claim, ended(claim, RELEASED), heartbeat)  # noqa: E731
    with search.holding(("reevaluation", n), release):  # a stopping search gives it back: a rerun takes it up at once
        try:
            o = search.launch_job(overrides(search, trial.params, n), n)
        except BaseException:  # KeyboardInterrupt
            release()
            raise
        if o.kind == "complete":
            scores = search.app.run_scores(search.study_dir / "reevaluation" / f"trial_{n}", claim["seeds"])
            record = result_record(claim, o.values[0], scores, time.time() - t0)
        elif o.kind in STOPS and o.kind != "launcher":
            record = ended(claim, RELEASED)
        else:  # error (a pruned run too: no pruner runs here), nan, diverged, lost, launcher: retried as failed
            if o.traceback:
                log.warning("re-evaluation of trial %d raised:\n%s", n, o.traceback)
            reason = f"{type(o.error).__name__}: {o.error}" if o.kind == "pruned" else o.reason
            record = failed_record(claim, o.kind if o.kind in (*FINAL_FAILURES, "lost") else "error", reason)
        _finish(search, n, claim, record, heartbeat)
    if o.kind in STOPS:
        search.stopping.set()
        raise search.bad_return(o, f" in the re-evaluation of trial {n}") if o.kind == "bad_return" else o.error
    _progress(search, trial, record)


def _finish(search, number: int, claim: dict, record: dict, heartbeat) -> None:
    """Write a re-evaluation's outcome, unless another worker took the claim over meanwhile or a
    result is already there."""
    heartbeat.stop()  # joined first: a late beat must not turn the outcome back into 'running'
    try:
        with search.store.claim_lock(search.storage_url):
            current = records(search.study).get(number) or {}
            if current.get("state") == RUNNING and current.get("token") != claim["token"]:
                log.warning("re-evaluation of trial %d was taken over by %s meanwhile: its result stays theirs",
                            number, current.get("worker"))
            elif not (current.get("state") == COMPLETE and record["state"] != COMPLETE
                      and same_seeds(current, claim["seeds"])):
                write_record(search.study, number, record)
    except Exception as err:  # never mask the error that brought us here
        if og.unreachable(err):  # the outage has its own lines; the claim goes stale and is taken over
            log.debug("re-evaluation of trial %d not recorded: the study storage is unreachable", number)
        else:
            log.warning("could not record the re-evaluation of trial %d: %s", number, err)


def _progress(search, trial, record: dict) -> None:
    sel, _ = selection(search.study, search.reeval)
    done = sum(is_done(rec, search.reeval) for _, rec in sel.candidates)
    what = f"FAIL ({record.get('fail_reason')})" if record["state"] != COMPLETE else f"{record['value']:.6g}" + (
        f", 95% CI [{record['ci_low']:.4g}, {record['ci_high']:.4g}]" if "ci_low" in record else "")
    log.info("re-evaluation of trial %d (search %.6g): %s | %d/%d candidates re-evaluated", trial.number,
             trial.value, what, done, len(sel.candidates))
    search.write_outputs(final=False)
    search.changed.set()
