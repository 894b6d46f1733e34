"""Loading and validating the results files that final runs write.

Layout (train.py phase=final): `<root>/<dataset>/<model>/<method>/seed<N>/results.json`. A run
directory without a readable, complete results.json is a *problem* that is reported by path: a table
that silently drops a seed would report a mean over fewer runs than the reader thinks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from autoft.records import RERUN, RESULTS_FILE, ResultsError, read_results
from autoft.values import finite

REQUIRED_KEYS = ("dataset", "model", "method", "seed", "objective_metric", "higher_is_better", "metrics")
ID_TEST = "id_test"  # the ID test split's name when a results file does not say (`id_test_split`)
# splits in `metrics` that are not test sets (selection and search data, never reported as tests)
NON_TEST_SPLITS = ("id_val", "ood_val")
_RUN_DIR = re.compile(r"seed\d+$")


@dataclass(frozen=True)
class RunResult:
    path: Path
    data: dict

    @property
    def method(self) -> str:
        return str(self.data["method"])

    @property
    def seed(self) -> int:
        return int(self.data["seed"])

    @property
    def metric(self) -> str:
        return str(self.data["objective_metric"])

    @property
    def group(self) -> tuple[str, str]:
        return str(self.data["dataset"]), str(self.data["model"])

    @property
    def id_test(self) -> str:
        """The ID test split's name (ImageNet's is `imagenet`, CIFAR-10's `cifar10`)."""
        return str(self.data.get("id_test_split", ID_TEST))

    @property
    def id_metrics(self) -> list[str]:
        """Metrics reported on the ID test, the table's ID column first (default: the objective)."""
        return [str(m) for m in self.data.get("id_test_metrics") or [self.metric]]

    @property
    def test_splits(self) -> list[str]:
        """Test splits in the order the task lists them: ID test first, then the OOD tests."""
        tests = [s for s in self.data["metrics"] if s not in NON_TEST_SPLITS]
        return [self.id_test] + [s for s in tests if s != self.id_test]

    @property
    def ood_splits(self) -> list[str]:
        """The OOD tests the OOD mean is taken over (every test but the ID test and the extras)."""
        return [s for s in self.test_splits[1:] if s not in self.extra_splits]

    @property
    def extra_splits(self) -> list[str]:
        """OOD tests reported for comparison only, outside the OOD mean (`Task.extra_tests`)."""
        return [str(s) for s in self.data.get("extra_test_splits") or []]

    @property
    def trained(self) -> bool:
        return bool(self.data.get("wise"))

    def value(self, split: str, metrics: Optional[dict] = None, metric: Optional[str] = None) -> float:
        """`metric` (default the objective) on `split` (from `metrics`, default the selected model's)."""
        return float((metrics or self.data["metrics"])[split][metric or self.metric])

    def id_value(self, metrics: Optional[dict] = None) -> float:
        """The ID column's number: the first ID metric on the ID test split."""
        return self.value(self.id_test, metrics, self.id_metrics[0])

    def ood_mean(self, metrics: Optional[dict] = None) -> float:
        return sum(self.value(s, metrics) for s in self.ood_splits) / len(self.ood_splits)

    def wise_alphas(self) -> list[float]:
        return sorted(float(a) for a in self.data.get("wise", {}))

    def wise_metrics(self, alpha: float) -> dict:
        """The metrics block of theta(alpha) = (1 - alpha) zero-shot + alpha fine-tuned."""
        wise = self.data.get("wise") or {}
        key = f"{alpha:.1f}"
        if key not in wise:
            raise ResultsError(f"{self.path}: no WiSE-FT evaluation at alpha={key} (has: {', '.join(wise) or 'none'})")
        return wise[key]


def problems_of(data: object) -> list[str]:
    """What makes a parsed results file unusable (empty list: it is fine)."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    out = [f"missing key '{k}'" for k in REQUIRED_KEYS if k not in data]
    if out:
        return out
    metrics, metric = data["metrics"], data["objective_metric"]
    id_test = data.get("id_test_split", ID_TEST)
    if not isinstance(metrics, dict) or id_test not in metrics:
        return [f"metrics has no '{id_test}' split (the ID test, id_test_split)"]
    extras = data.get("extra_test_splits") or []
    if not [s for s in metrics if s not in NON_TEST_SPLITS and s != id_test and s not in extras]:
        out.append("metrics has no OOD test split")
    out += [f"extra_test_splits names '{s}', which metrics does not hold" for s in extras if s not in metrics]
    id_metrics = data.get("id_test_metrics") or [metric]
    blocks = {"metrics": metrics, **{f"wise[{a}]": m for a, m in (data.get("wise") or {}).items()}}
    for where, block in blocks.items():
        for split, values in block.items():
            for m in (id_metrics if split == id_test else [metric]):
                v = values.get(m) if isinstance(values, dict) else None
                if not finite(v):
                    out.append(f"{where}['{split}'] has no finite '{m}'")
    return out


def read_result(path: Path) -> RunResult:
    """One results file, checked; raises ResultsError naming the file and what is wrong with it."""
    data = read_results(path)
    bad = problems_of(data)
    if bad:
        raise ResultsError(f"{path}: {'; '.join(bad)}; {RERUN}")
    return RunResult(Path(path), data)


def run_dirs(root: Path) -> list[Path]:
    """Every final-run directory under root: those named seed<N> and those holding a results file."""
    root = Path(root)
    found = {p.parent for p in root.rglob(RESULTS_FILE)}
    found |= {p for p in root.rglob("seed*") if p.is_dir() and _RUN_DIR.match(p.name)}
    return sorted(found)


def load_results(root: str | Path, strict: bool = True) -> tuple[list[RunResult], list[str]]:
    """All final runs under `root`, plus one line per problem found.

    strict: raise ResultsError listing every problem (the default: a table must not quietly lose a
    run). Not strict: return the usable runs and the problems, for the caller to print."""
    root = Path(root)
    if not root.exists():
        raise ResultsError(f"results directory not found: {root}")
    runs, problems = [], []
    for d in run_dirs(root):
        path = d / RESULTS_FILE
        if not path.is_file():
            problems.append(f"{path}: missing (the run did not finish: rerun it, or delete {d})")
            continue
        try:
            runs.append(read_result(path))
        except ResultsError as err:
            problems.append(str(err))
    problems += consistency_problems(runs)
    if not runs and not problems:
        problems.append(f"{root}: no {RESULTS_FILE} found (final runs write <dataset>/<model>/<method>/seed<N>/{RESULTS_FILE})")
    if strict and problems:
        raise ResultsError("unusable results:\n  " + "\n  ".join(problems))
    return runs, problems


def consistency_problems(runs: Iterable[RunResult]) -> list[str]:
    """Runs compared in one table must share the metric and the test sets; one run per (method, seed)."""
    out = []
    for group, members in group_runs(runs).items():
        first = members[0]
        seen: dict[tuple[str, int], Path] = {}
        for r in members:
            if r.metric != first.metric:
                out.append(f"{r.path}: objective_metric '{r.metric}' differs from '{first.metric}' of {first.path}")
            if r.test_splits != first.test_splits:
                out.append(f"{r.path}: test splits {r.test_splits} differ from {first.test_splits} of {first.path}")
            if r.id_metrics != first.id_metrics:
                out.append(f"{r.path}: ID test metrics {r.id_metrics} differ from {first.id_metrics} of {first.path}")
            key = (r.method, r.seed)
            if key in seen:
                out.append(f"{r.path}: a second result for method {r.method} seed {r.seed} (also {seen[key]})")
            seen[key] = r.path
    return out


def group_runs(runs: Iterable[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Runs by (dataset, model): one table per group."""
    out: dict[tuple[str, str], list[RunResult]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out
