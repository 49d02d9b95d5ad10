# make test / make demo do all their own setup: a .venv with the pinned stack (envs/requirements.txt), installed
# in one pip command, re-run only when the pins or pyproject.toml change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline by design: tests and the tiny preset never touch a model hub (albumentations phones PyPI otherwise).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled

.PHONY: install test demo clean-demo profiles

install: $(STAMP)

$(STAMP): envs/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "make: installing the pinned stack into $(VENV) (about 7 GB, a few minutes; log: $(VENV)/pip.log)"
	$(BIN)/pip install --quiet --disable-pip-version-check -r envs/requirements.txt -e . 2> $(VENV)/pip.log \
		|| { cat $(VENV)/pip.log; exit 1; }
	touch $@

# Two workers (pytest-xdist) fill both cores of the 2-core CI machine; worksteal rebalances what is left when
# one ends early. pytest exits 5 when it collected no test: that is a failure here, not a pass.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest --numprocesses $(TEST_WORKERS) --dist worksteal; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The rules call `microdit`, so the venv's bin goes first on PATH. A lock left by a killed demo is removed first
# when no Snakemake runs here (microdit/snakemake_lock.py); else that step says what to run.
DEMO_ARGS := --profile profiles/local --configfile config/tiny.yaml
demo: $(STAMP)
	$(BIN)/microdit unlock-stale --snakemake $(BIN)/snakemake -- $(DEMO_ARGS)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake $(DEMO_ARGS)
	@echo "make demo: done; the report is $(abspath results/tiny/report.html)"

# `snakemake --profile slurm` finds a named profile in ./slurm, $XDG_CONFIG_HOME/snakemake/ (else ~/.config/snakemake/)
# or /etc/xdg/snakemake/: link this checkout's there (a link: edits of profiles/slurm apply). -T refuses to replace
# a profile folder of the user's own.
SNAKEMAKE_PROFILES ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
profiles:
	mkdir -p "$(SNAKEMAKE_PROFILES)"
	ln -sfnT "$(abspath profiles/slurm)" "$(SNAKEMAKE_PROFILES)/slurm"

clean-demo:
	rm -rf results/tiny
