# Every target bootstraps .venv itself; `make install` is idempotent and quick when nothing changed.
PY      := .venv/bin/python
STAMP   := .venv/.installed
SHARED  ?= ../shared
export PYTHONPATH := $(CURDIR)

HF_PY    := .venv-hf/bin/python
HF_STAMP := .venv-hf/.installed

.PHONY: install test lint demo bench hf-venv clean export-model deploy

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	-$(PY) -m paddlebloom.ops.build
	touch $(STAMP)

install: $(STAMP)

# The peer (Hugging Face transformers + peft on torch CPU), for reference tests and benchmarks.
# torch 2.13.0 CPU comes from the wheel on this machine's disk when present.
$(HF_STAMP): requirements-hf.txt
	test -x $(HF_PY) || python3 -m venv .venv-hf
	PYTHONPATH= $(HF_PY) -m pip install -q --disable-pip-version-check -r requirements-hf.txt  # not our egg-info: the peer venv does not install paddlebloom
	touch $(HF_STAMP)

hf-venv: $(HF_STAMP)

bench: $(STAMP) $(HF_STAMP)
	$(PY) bench/run_train_bench.py
	$(PY) bench/run_generate_bench.py
	$(PY) bench/run_serve_bench.py
	$(PY) bench/run_scale_bench.py
	$(PY) bench/write_report.py
	@cat BENCHMARKS.md

test: $(STAMP) $(HF_STAMP) browser lint
	$(PY) -m pytest -q tests --durations=15

# ruff.toml: pycodestyle, pyflakes and import order at line length 120; `ruff format` keeps the layout.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(PY) -m paddlebloom.demo --output_dir $(DEMO_DIR)

clean:
	rm -rf runs .pytest_cache

# ---- Evaluation (issue 9). MODEL=CKPT evaluates that checkpoint; unset, a tiny one is built first.
EVAL_OUT        ?= runs/eval
WIKITEXT        ?= $(SHARED)/data/eval/wikitext-2-valid.txt
LAMBADA         ?= $(SHARED)/data/eval/lambada_test_first1000.jsonl
EVAL_SEQ_LENGTH ?= 256
EVAL_OVERLAP    ?= 128
EVAL_BATCH      ?= 8
EVAL_MODEL       = $(if $(MODEL),$(MODEL),$(EVAL_OUT)/tiny)
EVAL_FLAGS       = --model_name_or_path $(EVAL_MODEL) --batch_size $(EVAL_BATCH) --seq_length $(EVAL_SEQ_LENGTH)
EVAL_LAUNCH      = $(PY) -m paddle.distributed.launch --log_dir $(EVAL_OUT)/launch_log --nproc_per_node 2

.PHONY: run_eval run_eval_tps

$(EVAL_OUT)/tiny/config.json: | $(STAMP)
	$(PY) -m paddlebloom.create_tiny --output_dir $(EVAL_OUT)/tiny

run_eval: $(STAMP) $(if $(MODEL),,$(EVAL_OUT)/tiny/config.json)
	$(PY) eval/run_eval.py $(EVAL_FLAGS) --eval_path $(WIKITEXT) --overlapping_eval $(EVAL_OVERLAP) --output_file $(EVAL_OUT)/wikitext.json
	$(PY) eval/run_eval.py $(EVAL_FLAGS) --eval_path $(LAMBADA) --cloze_eval --output_file $(EVAL_OUT)/lambada.json

run_eval_tps: $(STAMP) $(if $(MODEL),,$(EVAL_OUT)/tiny/config.json)
	$(EVAL_LAUNCH) eval/run_eval.py $(EVAL_FLAGS) --tensor_parallel_degree 2 --eval_path $(WIKITEXT) --overlapping_eval $(EVAL_OVERLAP) --output_file $(EVAL_OUT)/wikitext_tp2.json
	$(EVAL_LAUNCH) eval/run_eval.py $(EVAL_FLAGS) --tensor_parallel_degree 2 --eval_path $(LAMBADA) --cloze_eval --output_file $(EVAL_OUT)/lambada_tp2.json

# ---- Export and deploy (issue 5). A target cannot be named `export` (a make keyword).
CKPT  ?= runs/demo/merged
INFER ?= inference

export-model: $(STAMP)
	$(PY) export/export_generation_model.py --model_name_or_path $(CKPT) --output_path $(INFER)/bloom

deploy: $(STAMP)
	$(PY) deploy/infer_generation.py --model_dir $(INFER) --model_prefix bloom --data_file $(SHARED)/data/instruct/belle_eval_set_1k.jsonl --output_file runs/deploy/predictions.jsonl --batch_size 4 --max_new_tokens 64

# ---- Serving (issue 8). The chat page's test drives Debian's chromium through its chromedriver:
# installed here when missing, so nothing is downloaded at test time.
PORT ?= 8080
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve browser

serve: $(STAMP)
	$(PY) deploy/serve.py --model_dir $(INFER) --model_prefix bloom --port $(PORT)

browser:
	@command -v chromium >/dev/null && test -x /usr/bin/chromedriver || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }
	@# a CJK font, or the page draws Chinese answers as empty boxes
	@fc-list :lang=zh | grep -q . || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq fonts-noto-cjk; }
