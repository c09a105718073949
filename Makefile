# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: install demo test test-unit services-up services-down flink-up flink-down bench

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

# Runs the frontend job on the bundled sample with embedded defaults
# (DuckDB file and Avro folder under ./output); needs no servers.
demo: install
	$(PYTHON) -m beam_pipelines.frontend

# The whole suite: provisions and starts Kafka, PostgreSQL, Redis, the S3
# server and the Flink cluster on loopback, runs every test, stops them.
test: install
	bash scripts/test.sh

test-unit: install
	$(PYTHON) -m pytest tests/unit

services-up:
	bash services/services.sh up

services-down:
	bash services/services.sh down

flink-up:
	bash flink/cluster.sh up

flink-down:
	bash flink/cluster.sh down
