# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: install demo demo-marketo test test-unit services-up services-down flink-up flink-down bench

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

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
