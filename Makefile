# distq: the commands a user and CI run. Each target provides what it needs.
SHELL := /bin/bash
VENV  := .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help install demo test faults lint bench clean

help:
	@echo "make demo   - the tutorial's squares job: 1 master + 2 workers, manager transport"
	@echo "make test   - the whole suite against real Redis and RabbitMQ (provisions them)"
	@echo "make faults - the fault-injection suite, long, then its figures into tests/faults/results.md and README.md"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - throughput and latency side by side with Celery, Dramatiq, RQ, raw clients"

install:
	@scripts/ensure-venv.sh

demo: install
	@scripts/demo.sh

test:
	@scripts/ensure-test-env.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The long fault suite (make test runs it short), the fuzz tests with more examples,
# then the figures: tests/faults/results.md and the table in README.md.
FAULTS_RESULTS ?= .build/faults
FUZZ_EXAMPLES ?= 2000
faults:
	@scripts/ensure-test-env.sh
	rm -rf $(FAULTS_RESULTS)
	DISTQ_FAULTS_FULL=1 DISTQ_FAULTS_RESULTS=$(FAULTS_RESULTS) $(VENV)/bin/pytest -m faults tests/faults $(PYTEST_ARGS)
	DISTQ_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -m fuzz $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: no fuzz tests here
	$(VENV)/bin/python tests/faults/render.py $(FAULTS_RESULTS) tests/faults/results.md README.md

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench:
	@bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache
