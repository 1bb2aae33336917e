# Every target bootstraps .venv itself; `make install` is idempotent and quick when nothing changed.
PY      := .venv/bin/python
STAMP   := .venv/.installed
SHARED  ?= ../shared
export PYTHONPATH := $(CURDIR)

.PHONY: install test demo clean

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests --durations=15

demo: $(STAMP)
	$(PY) -m paddlebloom.create_tiny --output_dir runs/demo/tiny

clean:
	rm -rf runs .pytest_cache
