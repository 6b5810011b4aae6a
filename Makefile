# lossbook: `make book` builds the book, `make test` runs the tests; both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# scale of the results the book shows; by default they are loaded from the committed files,
# RECOMPUTE=1 recomputes them at that scale
SCALE  ?= cpu
RECOMPUTE ?=
# data: a local folder (here ../shared/data when it exists); unset LOSSBOOK_DATA to download
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin LOSSBOOK_DATA), undefined)
ifneq ($(wildcard $(SHARED_DATA)/mnist.npz),)
export LOSSBOOK_DATA := $(SHARED_DATA)
endif
endif

.PHONY: setup book lint test test-slow bench browser-test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[book,test,cluster]"
	# torchattacks (APGD, AutoAttack for chapter 07 and the benchmark) pins an old `requests`: no deps
	$(PY) -m pip install --quiet --no-deps "torchattacks==3.5.1"
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $@

book: setup
	$(PY) -m lossbook book --scale $(SCALE) $(if $(RECOMPUTE),--recompute)

# lint first (seconds): ruff, and the import contract that keeps the layers true (pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check lossbook tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	PY=$(PY) benchmarks/run_all.sh

# headless Chromium (Debian's chromium + chromium-driver) over the built book; screenshots in docs/screenshots
browser-test: setup
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)
	$(PY) -m pip install --quiet "selenium>=4.20"
	$(PY) tests/browser_check.py book/_build/html docs/screenshots

clean:
	rm -rf book/_build
