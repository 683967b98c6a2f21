# distq: the commands a user and CI run. Each target provides what it needs.
SHELL := /bin/bash
VENV  := .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

TASKS ?= 100
WORKERS ?=

.PHONY: help install demo example test faults lint bench clean up down scale job logs ps images

help:
	@echo "make install - .venv with distq and its dev tools (demo, example and lint run it first)"
	@echo "make demo   - the tutorial's squares job: 1 master + 2 workers, manager transport"
	@echo "make example - word counts over a folder of text files: your own job, 2 workers"
	@echo "make test   - the whole suite against real Redis and RabbitMQ (provisions them)"
	@echo "make faults - the fault-injection suite, long, then its figures into tests/faults/results.md and README.md"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - throughput and latency side by side with Celery, Dramatiq, RQ, raw clients"
	@echo "make clean  - remove .venv and the build, test and lint caches"
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

example: install
	@scripts/example.sh

# The suite mostly waits (leases running out, brokers restarting, containers starting):
# TEST_WORKERS processes run its modules side by side (a module's tests stay together,
# so its brokers start once). TEST_WORKERS=0 runs it in one process. On 2 cores (4,266
# tests at a901abb5) 6 took 831 s, the CPU 73 % busy on average; 4 took 1,167 s.
TEST_WORKERS ?= 6
test:
	@scripts/ensure-test-env.sh
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadscope --durations=30 $(PYTEST_ARGS)

# The long fault suite (make test runs it short), the fuzz tests with more examples,
# then the figures: tests/faults/results.md and the table in README.md.
FAULTS_RESULTS ?= .build/faults
FUZZ_EXAMPLES ?= 200000
faults:
	@scripts/ensure-test-env.sh
	rm -rf $(FAULTS_RESULTS)
	DISTQ_FAULTS_FULL=1 DISTQ_FAULTS_RESULTS=$(FAULTS_RESULTS) $(VENV)/bin/pytest -m faults tests/faults $(PYTEST_ARGS)
	DISTQ_FAULTS_FULL=1 $(VENV)/bin/pytest tests/e2e/test_stack_{manager,redis,rabbitmq}.py -k "cut_off_its_network or batch_job or make_down" $(PYTEST_ARGS)
	DISTQ_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -m fuzz $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: no fuzz tests here
	$(VENV)/bin/python tests/faults/render.py $(FAULTS_RESULTS) tests/faults/results.md README.md

lint: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
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
