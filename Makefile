# Every target bootstraps .venv itself; `make install` is idempotent and quick when nothing changed.
PY      := .venv/bin/python
STAMP   := .venv/.installed
SHARED  ?= ../shared
export PYTHONPATH := $(CURDIR)

HF_PY    := .venv-hf/bin/python
HF_STAMP := .venv-hf/.installed

.PHONY: install test demo bench hf-venv clean

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The peer (Hugging Face transformers + peft on torch CPU), for reference tests and benchmarks.
# torch 2.13.0 CPU comes from the wheel on this machine's disk when present.
$(HF_STAMP): requirements-hf.txt
	test -x $(HF_PY) || python3 -m venv .venv-hf
	$(HF_PY) -m pip install -q --disable-pip-version-check -r requirements-hf.txt
	touch $(HF_STAMP)

hf-venv: $(HF_STAMP)

bench: $(STAMP) $(HF_STAMP)
	$(PY) bench/run_train_bench.py
	$(PY) bench/write_report.py
	@cat BENCHMARKS.md

test: $(STAMP) $(HF_STAMP)
	$(PY) -m pytest -q tests --durations=15

demo: $(STAMP)
	$(PY) -m paddlebloom.create_tiny --output_dir runs/demo/tiny

clean:
	rm -rf runs .pytest_cache
