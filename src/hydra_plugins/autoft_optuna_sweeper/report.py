"""The sweeper's progress lines, summary and study outputs (trials.csv, best_hparams.yaml,
optimization_results.yaml, plots), all derived from the storage. A mixin of AutoFTOptunaSweeper."""
import logging
import time

from hydra_plugins.autoft_optuna_sweeper.util import plain as _plain

log = logging.getLogger("hydra_plugins.autoft_optuna_sweeper.sweeper")


class ReportingMixin:
    def _progress(self, study, trial) -> None:
        from autoft.search.study import count, fail_reason, format_eta

        trials = study.get_trials(deepcopy=False)
        c = count(trials)
        done = c.done(self.count_pruned)
        t = self.store.trial(trial)
        if t.state.name == "COMPLETE":
            what = ", ".join(f"{v:.6g}" for v in t.values) if self.multi else f"{t.value:.6g}"
        else:
            what = t.state.name
        if t.state.name == "FAIL":
            what += f" ({fail_reason(t)})"
        elif t.state.name == "PRUNED":
            what += f" at step {t.last_step}" if t.last_step is not None else ""
        if self.multi:
            front = study.best_trials
            best_txt = f"Pareto front of {len(front)} trial(s)" if front else "no complete trial yet"
        else:
            try:
                best = study.best_trial
                best_txt = f"best {best.value:.6g} (trial {best.number})"
            except ValueError:
                best_txt = "no complete trial yet"
        finished = done - self._done0
        elapsed = time.time() - self._t0
        eta = (self.n_trials - done) * elapsed / finished if finished > 0 else None
        log.info("trial %d: %s | %s | %d/%d finished, %d running, %d failed | ETA %s", t.number, what, best_txt,
                 done, self.n_trials, c.running, c.failed, format_eta(eta) if done < self.n_trials else "0:00:00")
        self._write_outputs(final=False)
        self._changed.set()

    def _write_outputs(self, final: bool) -> None:
        from optuna.trial import TrialState

        from autoft.search import outputs as out
        from autoft.search.storage import mask_url

        study = getattr(self, "study", None)
        if study is None:
            return
        try:
            trials = study.get_trials(deepcopy=False)
            self._write_results(study, trials)
            if self.multi:  # trials.csv, best_hparams.yaml and the plots are single-objective
                return
            sel, recs = self._selection(study, trials)
            chosen = sel.winner.number if sel.winner is not None else None
            out.write_trials_csv(self.study_dir / "trials.csv", trials, reevaluations=recs, chosen=chosen)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if complete and sel.winner is not None and self.autoft_app:
                hp = out.best_hparams(self.config, sel.winner, study_name=self.study_name,
                                      storage=mask_url(self.storage_url), direction=self.direction,
                                      n_complete=len(complete), selection=sel if self.reeval.enabled else None)
                out.write_best_hparams(self.study_dir / "best_hparams.yaml", hp)
                # the study last run in this sweep dir: what `hparams=<sweep dir>/best_hparams.yaml` reads
                out.write_best_hparams(self.sweep_dir / "best_hparams.yaml", hp)
                if self.reeval.enabled:  # readers of the storage: autoft.search.reevaluation.chosen_trial_number
                    from autoft.search.reevaluation import WINNER_ATTR

                    winner = {"trial_number": int(sel.winner.number), **sel.summary()} if sel.complete else None
                    if study.user_attrs.get(WINNER_ATTR) != winner:
                        study.set_user_attr(WINNER_ATTR, winner)
            if final and self.plots:
                from autoft.reporting.plots import write_study_plots

                write_study_plots(study, self.study_dir / "plots", reevaluations=recs, chosen=chosen)
            if final and self.autoft_app and complete:  # the study's W&B run, from the files just written
                from autoft.reporting.wandb_logger import log_study

                log_study(self.config.get("logger"), self.study_dir, self.study_name)
        except Exception as err:  # outputs are derived from the storage: never fail the search for them
            log.warning("study outputs not fully written: %s", err)

    def _write_results(self, study, trials) -> None:
        """optimization_results.yaml (hydra-optuna-sweeper's file) in the sweep dir and the study dir:
        name, study_name, direction, and best_params/best_value, or for a multi-objective study the
        Pareto front as `solutions` (number, params, values per trial)."""
        import yaml
        from optuna.trial import TrialState

        from autoft.io import atomic_write_text

        if not any(t.state == TrialState.COMPLETE for t in trials):
            return
        out: dict = {"name": "optuna", "study_name": self.study_name, "direction": self.direction}
        if self.multi:
            out["solutions"] = [{"number": int(t.number), "params": _plain(dict(t.params)),
                                 "values": [float(v) for v in t.values]} for t in study.best_trials]
        else:
            best = study.best_trial
            if self.reeval.enabled:  # the winner of the re-evaluation when there is one
                sel, _ = self._selection(study, trials)
                best = sel.winner or best
            out["best_params"] = _plain(dict(best.params))
            out["best_value"] = float(best.value)
            out["best_trial_number"] = int(best.number)
        text = yaml.safe_dump(out, sort_keys=False)
        for d in (self.sweep_dir, self.study_dir):
            atomic_write_text(d / "optimization_results.yaml", text)

    def _selection(self, study, trials):
        """The trial best_hparams.yaml holds (re-evaluated winner, or the search's best) and the records."""
        from autoft.search import reevaluation as rv

        recs = rv.records(study) if self.reeval.enabled else None  # None: no re-evaluation columns
        return rv.select(trials, recs or {}, self.direction, self.reeval, self.reeval_seeds, self.max_retries), recs

    def _summary(self) -> None:
        from autoft.search.study import count

        c = count(self.study.get_trials(deepcopy=False))
        if self.multi:
            front = self.study.best_trials
            log.info("study %s: %d/%d finished (%d complete, %d failed); Pareto front (%s): %s", self.study_name,
                     c.done(self.count_pruned), self.n_trials, c.complete, c.failed, ", ".join(self.direction),
                     "; ".join(f"trial {t.number}: " + ", ".join(f"{v:.6g}" for v in t.values) for t in front)
                     or "empty")
            log.info("results: %s", self.sweep_dir / "optimization_results.yaml")
            return
        try:
            best = self.study.best_trial
        except ValueError:
            log.info("study %s: %d/%d finished, no complete trial", self.study_name, c.done(self.count_pruned),
                     self.n_trials)
            return
        log.info("study %s: %d/%d finished (%d complete, %d pruned, %d failed); best %.6g at trial %d",
                 self.study_name, c.done(self.count_pruned), self.n_trials, c.complete, c.pruned, c.failed,
                 best.value, best.number)
        if self.reeval.enabled:
            sel, _ = self._selection(self.study, self.study.get_trials(deepcopy=False))
            log.info("top-%d re-evaluation with seeds %s (trial: search score -> re-evaluated mean):",
                     self.reeval.top_k, ", ".join(map(str, self.reeval_seeds)))
            for e in sel.summary()["candidates"]:
                after = (f"{e['reevaluated_objective']:.6g}" if "reevaluated_objective" in e
                         else f"{e['state']}" + (f" ({e['fail_reason']})" if e.get("fail_reason") else ""))
                mark = "  <- chosen" if sel.winner is not None and e["trial_number"] == sel.winner.number else ""
                log.info("  trial %d: %.6g -> %s%s", e["trial_number"], e["search_objective"], after, mark)
            if sel.note:
                log.info("%s", sel.note)
        if self.autoft_app:
            log.info("best hyperparameters: %s", self.study_dir / "best_hparams.yaml")
        log.info("results: %s", self.sweep_dir / "optimization_results.yaml")
