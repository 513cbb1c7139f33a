# mevwatch — `make run` and `make test` are the two commands (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest deps bench demo clean constraints deb wheel

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

## constraints: pin what the venv holds now (after a deliberate upgrade: pip install -U X, make test, this)
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

## run: the daemon on the embedded default config, serving http://127.0.0.1:9717/metrics
run: $(STAMP)
	$(VENV)/bin/mevwatch run

## deb: the Debian package (debhelper + dh-virtualenv, from .ci/install-deps) as ./mevwatch_<version>_<arch>.deb,
## built from a copy of the tree (uncommitted files included) so the checkout stays clean
DEB_BUILD ?= build/deb
DEB_OUT   ?= .
deb:
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C $(DEB_BUILD)/src
	cd $(DEB_BUILD)/src && \
	  MEVWATCH_BUILD_BRANCH="$$(git -C $(CURDIR) rev-parse --abbrev-ref HEAD)" \
	  MEVWATCH_BUILD_REVISION="$$(git -C $(CURDIR) rev-parse HEAD)$$(git -C $(CURDIR) diff --quiet HEAD || echo -dirty)" \
	  MEVWATCH_BUILD_USER="$$(id -un)@$$(hostname)" \
	  dpkg-buildpackage -b -us -uc
	rm -f $(DEB_OUT)/mevwatch_*.deb && mv $(DEB_BUILD)/mevwatch_*.deb $(DEB_OUT)/
	@ls -l $(DEB_OUT)/mevwatch_*.deb

## wheel: the wheel (with its build information) into dist/; pipx install dist/mevwatch-*.whl works anywhere
wheel: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel -q --no-deps -w dist .
	@ls -l dist/*.whl

## deps: every peer the tests talk to (Debian packages when root, anvil via npm); idempotent
deps: $(STAMP)
	./.ci/install-deps

## test: install what the tests need, then ruff, mypy and pytest (what CI runs)
test: deps lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## pytest runs in PYTEST_WORKERS processes (pytest-xdist), a test file per worker: most of the suite's time is
## daemons waiting out a `for` or a timeout, not CPU (974 s in one process, 737 s in 4 on 2 cores);
## PYTEST_WORKERS=0 runs it in this process
PYTEST_WORKERS ?= 4
pytest: $(STAMP)
	PATH="$(CURDIR)/.tools/node/node_modules/.bin:$$PATH" $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## bench: every benchmark once, then one summary table (measure, anchor, mevwatch, ratio, goal, met);
## a goal not met is a figure, never a failure (soak.py runs 30 min on its own: $(PY) bench/soak.py --minutes N)
bench: $(STAMP)
	@summary=$$(mktemp); crashed=""; \
	for b in bench/[!_]*.py; do case $$b in */demo.py|*/soak.py) continue;; esac; \
	  echo "== $$b"; MEVWATCH_BENCH_SUMMARY=$$summary $(PY) $$b || crashed="$$crashed $$b"; done; \
	$(PY) bench/_summary.py $$summary $$crashed; rm -f $$summary

## demo: real peers, Prometheus and Alertmanager, then the runbook's incidents (DEMO_ARGS="--list")
demo: $(STAMP) deps
	$(PY) bench/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .tools .mevwatch .mypy_cache .ruff_cache .pytest_cache build dist mevwatch_*.deb
