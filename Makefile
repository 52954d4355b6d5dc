# Winnow: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint unit model model-eval bench-setup bench clean

# Chromium (Debian's package) opens the audit report in the tests, with a CJK font (WenQuanYi Zen Hei)
# so that Chinese, Japanese and Korean captions render as text; shellcheck lints deploy/'s scripts.
setup: $(STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@fc-list :lang=zh family | grep -q . || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei)
	@command -v shellcheck >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/winnow demo --workdir build/demo

lint: setup
	$(BIN)/ruff check pipeline transforms schemas sampleweb tests benchmarks models deploy
	$(BIN)/ruff format --check pipeline transforms schemas sampleweb tests benchmarks models deploy
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q --durations=20

test: lint unit

# The shipped CLIP model: retrain it on the sample web (CPU, minutes), or print its held-out metrics.
model: setup
	$(BIN)/python models/train_tiny_clip.py --out transforms/embed/models/winnow-tiny-clip

model-eval: setup
	$(BIN)/python models/train_tiny_clip.py --out transforms/embed/models/winnow-tiny-clip --eval-only

# img2dataset lives in its own environment: its pins are not Winnow's.
bench-setup: setup
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet img2dataset==1.47.0

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
