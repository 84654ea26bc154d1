# Two entry points do all set-up on a fresh machine (Python 3.11, no GPU):
#   make demo   - the main job on the built-in default
#   make test   - the default test suite (fast; `make test-slow` adds the slow marker)
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow parity bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

DEMO_SEED ?= 0
demo: $(STAMP)
	$(BIN)/python -m sam2pp_jax.demo --seed $(DEMO_SEED)

# pytest exit 5 = no tests collected: a failure for the default suite, fine for the slow one.
test: $(STAMP)
	@$(BIN)/python -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	@$(BIN)/python -m pytest -q -m slow; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test-slow: no slow tests selected"; exit 0; fi; exit $$rc

parity: $(STAMP)
	$(BIN)/python -m sam2pp_jax.parity --components $(wildcard ../shared/parity/*.npz)

clean:
	rm -rf $(VENV) .pytest_cache
