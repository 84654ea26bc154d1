# Two entry points do all set-up on a fresh machine (Python 3.11, no GPU):
#   make demo   - the main job on the built-in default (fine-tunes the shipped checkpoint,
#                 tracks held-out synthetic video at three granularities, scores it)
#   make demo-scratch - the same, training the tiny model from scratch (10 minutes)
#   make pretrain - reproduce the shipped checkpoint (configs/train.py:pretrain_tiny)
#   make test   - `make lint`, then the default test suite (fast; `make test-slow` adds the
#                 slow marker)
#   make app    - the web app (sam2pp_jax.app) on the shipped checkpoint: open a video, click,
#                 propagate, correct, export (APP_ARGS="--video PATH --port N" to pass options)
#   make lint   - ruff check + ruff format --check (configuration: [tool.ruff] in pyproject.toml)
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-scratch pretrain app test test-slow lint parity bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

DEMO_SEED ?= 0
demo: $(STAMP)
	$(BIN)/python -m sam2pp_jax.demo --seed $(DEMO_SEED)

demo-scratch: $(STAMP)
	$(BIN)/python -m sam2pp_jax.demo --seed $(DEMO_SEED) --scratch

APP_ARGS ?=
app: $(STAMP)
	$(BIN)/python -m sam2pp_jax.app --checkpoint checkpoints/tiny $(APP_ARGS)

PRETRAIN_DIR ?= runs/pretrain_tiny
pretrain: $(STAMP)
	$(BIN)/python train.py --config configs/train.py:pretrain_tiny --workdir $(PRETRAIN_DIR)

LINT_PATHS := sam2pp_jax tests bench configs $(wildcard *.py)
# Both checks always run (each prints its findings); lint fails if either does.
lint: $(STAMP)
	@rc=0; $(BIN)/ruff check $(LINT_PATHS) || rc=1; \
	  $(BIN)/ruff format --check $(LINT_PATHS) || rc=1; exit $$rc

# pytest exit 5 = no tests collected: a failure for the default suite, fine for the slow one.
test: $(STAMP) lint
	@$(BIN)/python -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	@$(BIN)/python -m pytest -q -m slow; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test-slow: no slow tests selected"; exit 0; fi; exit $$rc

parity: $(STAMP)
	$(BIN)/python -m sam2pp_jax.parity --components $(wildcard ../shared/parity/*.npz)

clean:
	rm -rf $(VENV) .pytest_cache
