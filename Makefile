# distq: the commands a user and CI run. Each target provides what it needs.
SHELL := /bin/bash
VENV  := .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help install demo test lint bench clean

help:
	@echo "make demo   - the tutorial's squares job: 1 master + 2 workers, manager transport"
	@echo "make test   - the whole suite against real Redis and RabbitMQ (provisions them)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - throughput and latency side by side with Celery, Dramatiq, RQ, raw clients"

install:
	@scripts/ensure-venv.sh

demo: install
	@scripts/demo.sh

test:
	@scripts/ensure-test-env.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench:
	@bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache
