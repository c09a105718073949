# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: lock install demo demo-marketo test test-unit services-up services-down flink-up flink-down bench

# Every install takes the versions pinned in constraints.txt (what the suite
# last passed on). PIP_CONSTRAINT also reaches pip's isolated build
# environments (setuptools, wheel), which `-c` alone does not.
CONSTRAINTS := $(CURDIR)/constraints.txt
UV_VERSION := 0.13.9

install:
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

# Regenerates constraints.txt from setup.py's ranges (newest versions that
# fit), for Python 3.11 as CI and the Dockerfile run it. Commit the result
# after `make test` passes on it.
lock:
	$(PYTHON) -m pip install $(PIP_FLAGS) 'uv==$(UV_VERSION)'
	$(PYTHON) -m uv pip compile setup.py constraints.in --extra test \
	  --python-version 3.11 --custom-compile-command 'make lock' -o constraints.txt

# Runs the frontend job on the bundled sample with embedded defaults
# (DuckDB file and Avro folder under ./output); needs no servers.
demo: install
	$(PYTHON) -m beam_pipelines.frontend

# The three sources on their samples (embedded defaults), Marketo last so its
# leads find their frontend sessions and agent conversations; then the
# design document's qualified-leads query.
demo-marketo: install
	$(PYTHON) -m beam_pipelines.frontend
	$(PYTHON) -m beam_pipelines.text_agent
	$(PYTHON) -m beam_pipelines.marketo
	$(PYTHON) -c "import duckdb; print('leads scored > 80:', duckdb.connect('output/iheardai.duckdb', read_only=True).execute('SELECT COUNT(*) FROM marketo_leads WHERE lead_quality_score > 80;').fetchone()[0])"

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
