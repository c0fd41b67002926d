# Two commands set everything up on a fresh machine that has only python3:
#   make demo   create .venv, install binsweep, run the demo sweep end to end (sweep, leaderboard, promote, predict)
#   make test   create .venv, install binsweep with its test extras, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp records the pyproject.toml that was installed: a second `make test`
# installs nothing unless pyproject.toml changed.
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/binsweep demo

# One test process: the Ray tests each start their own local cluster, and two at once on 2 cores were slower and
# flaky (measured: 22 min with pytest-xdist -n 2 against 19 min serial).
test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bast_step.py --preset bast_small --batch 16

clean:
	rm -rf $(VENV) .pytest_cache
