# Two commands do all the set-up: `make demo` (the main job end to end) and `make test`.
# Each creates or refreshes .venv when pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recsys generate --output $(DEMO_DIR)/synthetic.parquet --users 2000 --items 1000 \
		--interactions 100000 --seed 0
	$(BIN)/recsys prepare --input $(DEMO_DIR)/synthetic.parquet --format parquet \
		--output $(DEMO_DIR)/prepared
	$(BIN)/recsys train --data $(DEMO_DIR)/prepared --max-len 50 --epochs 30 \
		--output $(DEMO_DIR)/run
	$(BIN)/recsys evaluate --model $(DEMO_DIR)/run/bundle --data $(DEMO_DIR)/prepared
	rm -rf $(DEMO_DIR)/recommendations
	$(BIN)/recsys recommend --model $(DEMO_DIR)/run/bundle --users all --k 100 \
		--output $(DEMO_DIR)/recommendations

test: $(STAMP)
	$(BIN)/ruff check recsys pipelines tests benchmarks
	$(BIN)/ruff format --check recsys pipelines tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DIR)
