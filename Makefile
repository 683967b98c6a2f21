# distq: the commands a user and CI run. Each target provides what it needs.
SHELL := /bin/bash
VENV  := .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

TASKS ?= 100
WORKERS ?=

.PHONY: help install demo test lint bench clean up down scale job logs ps images

help:
	@echo "make demo   - the tutorial's squares job: 1 master + 2 workers, manager transport"
	@echo "make test   - the whole suite against real Redis and RabbitMQ (provisions them)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - throughput and latency side by side with Celery, Dramatiq, RQ, raw clients"
	@echo
	@echo "In containers (README: Run it in containers); DISTQ_TRANSPORT=manager|redis|rabbitmq, default redis:"
	@echo "make up               - build the images; start the broker, a master in --rate mode, a worker, Prometheus"
	@echo "make scale WORKERS=N  - run N workers"
	@echo "make job TASKS=N      - one batch job against the running stack (exit 0: every result in and correct)"
	@echo "make logs, make ps    - follow the logs (SERVICE=worker: one service), list the containers"
	@echo "make images           - build the distq-master and distq-worker images"
	@echo "make down             - stop; remove the containers, networks and volumes"

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

up:
	@scripts/compose-stack.sh up

down:
	@scripts/compose-stack.sh down

scale:
	@scripts/compose-stack.sh scale "$(WORKERS)"

job:
	@scripts/compose-stack.sh job "$(TASKS)"

logs:
	@scripts/compose.sh logs -f --tail=50 $(SERVICE)

ps:
	@scripts/compose.sh ps

images:
	@scripts/ensure-docker.sh
	@scripts/compose-images.sh build
