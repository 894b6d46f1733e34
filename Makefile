# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo foundation test test-slow test-all rehearsal gpu-check wandb-sync clean-outputs

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

foundation: install  ## build (once, cached) the embedded task's small CLIP model
	$(PY) scripts/build_foundation.py

demo: install  ## the whole method on the embedded default task: search, final retrain, baselines, table
	$(PY) scripts/demo.py

# test processes: one more than the cores, since tests spend part of their time waiting on the runs
# they start (heartbeats, outages, workers); a whole file goes to one process (its module fixtures run once)
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: install  ## the default suite: every test not marked slow, TEST_WORKERS processes (README "Tests" prints its count and times)
	$(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: install  ## longer end-to-end checks
	$(PY) -m pytest -m slow -q

test-all: install
	$(PY) -m pytest -q

REHEARSAL_OUT ?= rehearsal
rehearsal: install  ## the README's real-data commands at full size on fabricated data (ViT-B/16, 182 classes, 1024x768)
	$(PY) scripts/rehearsal.py --out $(REHEARSAL_OUT)

OUT ?= gpu_check_report
GPU_CHECK_ARGS ?=
gpu-check: install  ## on a GPU, in one call (<= 8 min): pytest -m cuda, bench_search, bench_loader, rehearsal --tiny; report in $(OUT)/gpu_check.{md,json}
	$(PY) scripts/gpu_check.py --out $(OUT) $(GPU_CHECK_ARGS)

WANDB_SYNC_ARGS ?=
wandb-sync: install  ## upload the offline W&B runs under outputs/ (WANDB_SYNC_ARGS=--dry-run lists them)
	$(PY) -m autoft.reporting.wandb_sync outputs $(WANDB_SYNC_ARGS)

clean-outputs:
	rm -rf outputs multirun
