"""Tables and plots for a results directory (what scripts/make_tables.py and the notebook call).

For each (dataset, model) found under the root, writes next to the results:
  results_table.md / .tex / .csv / .json    the paper-style table (see autoft.reporting.tables)
  plots/id_vs_ood.png, plots/wise_curves.png
  plots/search_history_<study>.png, plots/search_importances_<study>.png   for each study given

Reporting only reads records: results.json files, and studies already loaded by the caller
(autoft.search.study.load_studies_under / load_studies); it opens no Optuna storage.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from os import PathLike
from typing import Any, Mapping, Optional, Sequence

from autoft.reporting import plots as P
from autoft.io import atomic_write_text, write_json
from autoft.reporting.results import RunResult, group_runs, load_results
from autoft.reporting.tables import Table, build_table, caption, load_reference, to_csv_rows, to_latex, to_markdown

log = logging.getLogger(__name__)


@dataclass
class GroupReport:
    dataset: str
    model: str
    out_dir: Path
    table: Table
    runs: list[RunResult]
    files: list[Path] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return to_markdown(self.table)


@dataclass
class Report:
    groups: list[GroupReport]
    problems: list[str]

    @property
    def files(self) -> list[Path]:
        return [f for g in self.groups for f in g.files]


def _group_dir(root: Path, runs: Sequence[RunResult], n_groups: int) -> Path:
    """The directory that holds a group's runs (<dataset>/<model>), or the root when it is the only group."""
    if n_groups == 1:
        return root
    # results live at <group dir>/<method>/seed<N>/results.json
    parents = {r.path.parent.parent.parent for r in runs}
    return parents.pop() if len(parents) == 1 else root / runs[0].group[0] / runs[0].group[1]


def write_table_files(table: Table, out_dir: Path, problems: Sequence[str] = ()) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"{caption(table)}\n\n{to_markdown(table)}"
    if problems:  # a table built despite unusable runs says so, by path
        md += "\nNot included (unusable results):\n\n" + "".join(f"- {p}\n" for p in problems)
    paths = {"md": out_dir / "results_table.md", "tex": out_dir / "results_table.tex",
             "csv": out_dir / "results_table.csv", "json": out_dir / "results_table.json"}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["tex"], to_latex(table))
    rows = to_csv_rows(table)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["method"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], buf.getvalue())
    write_json(paths["json"], table.as_dict())
    return list(paths.values())


def write_plots(table: Table, runs: Sequence[RunResult], out_dir: Path, studies: Sequence[Any] = ()) -> list[Path]:
    """studies: study records (name, directions, trials; autoft.search.study.StudyRecord)."""
    plot_dir = out_dir / "plots"
    written = [P.plot_id_vs_ood(table, runs, plot_dir / "id_vs_ood.png")]
    w = P.plot_wise_curves(runs, plot_dir / "wise_curves.png", table.metric)
    if w is not None:
        written.append(w)
    written += P.plot_studies(studies, plot_dir)
    return written


def _studies_of(out_dir: Path, studies: Mapping[Any, Sequence[Any]], n_groups: int) -> list:
    """The records a group plots: those whose study file lies under its directory (with one group, all),
    and those of storages given by URL rather than path (every group)."""
    mine = []
    for place, records in studies.items():
        if n_groups == 1 or not isinstance(place, PathLike) or out_dir.resolve() in Path(place).resolve().parents:
            mine += records
    return mine


def make_report(root: str | Path, wise_of: Sequence[str] = ("ft",), wise_alpha: float = 0.5,
                reference: Optional[str | Path] = None, strict: bool = True, plots: bool = True,
                studies: Mapping[Any, Sequence[Any]] = {}) -> Report:
    """Tables (and plots) for every (dataset, model) under root. strict: unusable results files stop
    it with a message naming each; not strict: they are listed in the report and the table files.
    studies: where a study lives -> its loaded records (autoft.search.study.load_studies_under(root),
    plus {url: load_studies(url)} for other storages). A Path key is plotted with the group whose
    directory holds it (with one group, every study is); any other key (a storage URL) with every group."""
    root = Path(root)
    runs, problems = load_results(root, strict=strict)
    ref = load_reference(reference) if reference else None
    groups = group_runs(runs)
    reports = []
    for (dataset, model), members in sorted(groups.items()):
        out_dir = _group_dir(root, members, len(groups))
        table = build_table(members, wise_of=wise_of, wise_alpha=wise_alpha, reference=ref)
        g = GroupReport(dataset, model, out_dir, table, members)
        g.files = write_table_files(table, out_dir, problems)
        if plots:
            g.files += write_plots(table, members, out_dir, _studies_of(out_dir, studies, len(groups)))
        reports.append(g)
    return Report(reports, problems)


def log_to_wandb(report: Report, project: str = "autoft", entity: Optional[str] = None, mode: str = "auto") -> None:
    """One W&B run (job_type = report) per group: the table as a W&B table, the plots as images, and
    every table and plot file as an artifact; its id comes from the group's folder, so rerunning
    updates it. Never raises."""
    from autoft.reporting import wandb_logger as W

    for g in report.groups:
        run = W.start_run(enabled=True, project=project, entity=entity, mode=mode, job_type="report",
                          name=f"report-{g.dataset}-{g.model}", group=f"{g.dataset}/{g.model}",
                          run_id=W.run_id("report", Path(g.out_dir).resolve()),  # rerun: the same run, updated
                          config={"dataset": g.dataset, "model": g.model, "metric": g.table.metric,
                                  "wise_alpha": g.table.wise_alpha}, out_dir=g.out_dir)
        with run.closing():
            run.table("results_table", to_csv_rows(g.table))
            run.images([p for p in g.files if p.suffix == ".png"])
            run.summary({f"{r.key}/{c}": cell.mean for r in g.table.rows for c, cell in r.cells.items()})
            run.artifact(f"results-{g.dataset}-{g.model}", "results", g.files,
                         metadata={"metric": g.table.metric, "problems": report.problems})
