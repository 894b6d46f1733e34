#!/usr/bin/env python
"""A researcher's first hour, rehearsed at full scale on this machine, offline:

    make rehearsal                                  # = python scripts/rehearsal.py --out rehearsal
    python scripts/rehearsal.py --out DIR [--json FILE] [--tiny]

1. weights: CLIP ViT-B/16 (the paper's backbone) with random weights, in open_clip's own state dict,
   written where open_clip's hub download of ViT-B-16/openai looks (a Hugging Face cache under
   DIR/hf, open_clip's file name; HF_HUB_OFFLINE=1 from here on);
2. data: a fabricated iWildCam v2.0 tree with all 182 classes and 1024x768 JPEGs (train: one image
   of each class; small evaluation splits);
3. the README's real-data commands exactly as written there (read from README.md), run from DIR/work
   with `/data` replaced by the fabricated tree and small budgets appended: the check, the search
   (2 trials), the final retrain (zero-shot and AutoFT, one short epoch) with its tables.

Each phase's wall time and peak memory (the largest process's RSS; on CUDA also the peak memory torch
allocated, from the runs' `resources` records) are printed and written to DIR/rehearsal.json (or
--json). Exit status 0 when every phase succeeded and wrote what it should. `--tiny` runs the same
commands on a 5-class tree of small images with the tiny random CLIP (model=tiny_vit): the test suite
runs it to keep the README's commands working (tests/test_readme.py); the full size is a `slow` test.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_SECTION = "## Real data: the paper's workflow"
DATA_PLACEHOLDER = "/data"  # the README's data folder
WORK_LINKS = ("train.py", "scripts", "conf", "README.md")  # what the README's commands name, relative to their cwd

# small budgets appended to each README command, by the script it runs; the full-size and --tiny runs
SEARCH = ["search.n_trials=2", "trainer.inner_steps=2", "trainer.batch_size=4", "search.bootstrap=100"]
FINAL = ["--methods", "zeroshot,autoft", "--seeds", "0", "trainer.epochs=1", "dataset.passes_per_epoch=1",
         "trainer.batch_size=8"]
# the check compares with the fabricated tree's own sizes (data/expected.json), not the release's
SMALL = {"prepare_data.py": ["--expect", "{data}/expected.json"], "train.py": SEARCH, "final_retrain.py": FINAL}
TINY = {"prepare_data.py": [], "train.py": ["model=tiny_vit"], "final_retrain.py": ["--model", "tiny_vit"]}
FULL_TREE = {"n_classes": 182, "image_size": (1024, 768), "per_class": {"train": 1},
             "sizes": {"id_val": 24, "id_test": 24, "val": 48, "test": 24}}


def readme_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the README's real-data block, as written (comment lines dropped)."""
    text = readme.read_text(encoding="utf-8")
    if README_SECTION not in text:
        raise SystemExit(f"{readme}: no '{README_SECTION}' section")
    block = text.split(README_SECTION, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def with_small_budgets(line: str, data_root: Path, extra: dict[str, list[str]]) -> list[str]:
    """One README command as argv: the data folder replaced, the budgets for its script appended."""
    argv = [str(data_root) if a == DATA_PLACEHOLDER else
            a.replace(f"={DATA_PLACEHOLDER}", f"={data_root}") for a in shlex.split(line)]
    script = next((Path(a).name for a in argv if a.endswith(".py")), None)
    if script not in extra:
        raise SystemExit(f"README command not rehearsed (add its budgets to scripts/rehearsal.py): {line}")
    return argv + [a.replace("{data}", str(data_root)) for a in extra[script]]


def write_weights(hf_home: Path) -> list[Path]:
    """ViT-B/16 with random weights, where open_clip's hub download of ViT-B-16/openai finds them."""
    import open_clip
    import torch

    from autoft.models.hub import write_hub_weights

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", force_quick_gelu=True)
    return write_hub_weights(model.state_dict(), "ViT-B-16", "openai", cache_dir=str(hf_home / "hub"))


def fabricate_tree(root: Path, tiny: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import fabricate

    return fabricate.make_iwildcam(root) if tiny else fabricate.make_iwildcam(root, **FULL_TREE)


def run_phase(name: str, argv: list[str], cwd: Path, env: dict, log_dir: Path) -> dict:
    """Run one command; its wall time, exit status and peak RSS (the largest process of its tree:
    wait4's rusage covers the waited-for descendants)."""
    print(f"\n== {name}: $ {shlex.join(argv)}", flush=True)
    log = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: proc.stdout.readline(), b""):
            out.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"phase": name, "command": shlex.join(argv), "seconds": round(time.perf_counter() - t0, 1),
            "returncode": proc.returncode, "peak_rss_bytes": usage.ru_maxrss * 1024, "log": str(log)}


def cuda_peak(paths) -> int | None:
    """The largest `resources.cuda_peak_allocated_bytes` of these trial.json / results.json files."""
    from autoft.records import TRIAL_FILE, read_results, read_trial

    records = [read_trial(p) if p.name == TRIAL_FILE else read_results(p) for p in paths]
    peaks = [(r or {}).get("resources", {}).get("cuda_peak_allocated_bytes") for r in records]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def expected_outputs(out: Path) -> dict[str, list[Path]]:
    """What each phase must leave behind (checked after it ran)."""
    from autoft.records import HPARAMS_FILE, RESULTS_FILE

    return {"search": [out / "search-autoft" / HPARAMS_FILE, out / "search-autoft" / "optimization_results.yaml"],
            "final": [out / "zeroshot" / "seed0" / RESULTS_FILE, out / "autoft" / "seed0" / RESULTS_FILE,
                      out / "results_table.md"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="rehearsal", help="working folder (weights, data, outputs, logs)")
    ap.add_argument("--json", help="where to write the measurements (default: <out>/rehearsal.json)")
    ap.add_argument("--tiny", action="store_true", help="5 classes, small images, the tiny random CLIP")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    work, data, hf_home, logs = out / "work", out / "data", out / "hf", out / "logs"
    for d in (work, logs):
        d.mkdir(parents=True, exist_ok=True)
    for name in WORK_LINKS:  # the README's relative paths, with outputs/ of the rehearsal's own
        link = work / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    # the weights' and autoft's caches are the rehearsal's own; `python` in the README is this interpreter
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", AUTOFT_CACHE_DIR=str(out / "cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "AUTOFT_IMAGE_CACHE_DIR"):
        env.pop(var, None)

    phases, t_all = [], time.perf_counter()
    t0 = time.perf_counter()
    if not args.tiny:
        written = write_weights(hf_home)
        phases.append({"phase": "weights", "seconds": round(time.perf_counter() - t0, 1), "returncode": 0,
                       "files": [str(p) for p in written]})
        print(f"== weights: {', '.join(str(p) for p in written)}", flush=True)
    t0 = time.perf_counter()
    manifest = fabricate_tree(data, args.tiny)
    (data / "expected.json").write_text(json.dumps({"counts": manifest["counts"], "classes": manifest["classes"]}))
    phases.append({"phase": "data", "seconds": round(time.perf_counter() - t0, 1), "returncode": 0,
                   "counts": manifest["counts"], "classes": manifest["classes"]})
    print(f"== data: {manifest['classes']} classes, {manifest['counts']} under {data}", flush=True)

    model = "tiny_vit" if args.tiny else "vit_b16"
    results = work / "outputs" / "iwildcam" / model
    from autoft.records import RESULTS_FILE, TRIAL_FILE

    names = {"prepare_data.py": "check", "train.py": "search", "final_retrain.py": "final"}
    extra = {k: SMALL[k] + (TINY[k] if args.tiny else []) for k in SMALL}
    for line in readme_commands():
        argv_ = with_small_budgets(line, data, extra)
        name = names[next(Path(a).name for a in argv_ if a.endswith(".py"))]
        before = time.time()
        rec = run_phase(name, argv_, work, env, logs)
        fresh = [p for p in results.rglob("*.json") if p.name in (TRIAL_FILE, RESULTS_FILE)
                 and p.stat().st_mtime >= before]
        rec["cuda_peak_allocated_bytes"] = cuda_peak(fresh)
        missing = [str(p) for p in expected_outputs(results).get(name, []) if not p.is_file()]
        if missing:
            rec["missing"] = missing
        phases.append(rec)
        if rec["returncode"] != 0 or missing:
            break

    ok = all(p["returncode"] == 0 and not p.get("missing") for p in phases) and \
        {p["phase"] for p in phases} >= {"check", "search", "final"}
    report = {"ok": ok, "tiny": args.tiny, "seconds": round(time.perf_counter() - t_all, 1),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "phases": phases}
    try:
        import torch
        report["machine"].update(torch=torch.__version__, cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except Exception:  # the report must still be written
        pass
    dest = Path(args.json) if args.json else out / "rehearsal.json"
    from autoft.io import write_json
    write_json(dest, report)
    print("\n phase    seconds  peak RSS   CUDA peak  status")
    for p in phases:
        rss = f"{p['peak_rss_bytes'] / 2**30:6.2f} GiB" if p.get("peak_rss_bytes") else "         -"
        gpu = f"{p['cuda_peak_allocated_bytes'] / 2**30:6.2f} GiB" if p.get("cuda_peak_allocated_bytes") else "         -"
        status = "ok" if p["returncode"] == 0 and not p.get("missing") else f"FAILED ({p.get('missing') or p['returncode']})"
        print(f" {p['phase']:<8} {p['seconds']:7.1f}  {rss}  {gpu}  {status}")
    print(f" total    {report['seconds']:7.1f}   -> {dest}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
