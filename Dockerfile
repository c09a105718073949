# syntax=docker/dockerfile:1
#
# The project's image, used in two places (flink/k8s):
#   - the Beam Python worker pool sidecar of every Flink TaskManager
#     (default command; Beam environment EXTERNAL, port 50000). An external
#     worker pool does not install the artifacts Beam stages, so the
#     pipelines are installed here with `pip install .`;
#   - the submitter, `python -m runners.submit ...`, which needs Python, the
#     pipelines and the Beam Flink job-server uber jar, but no Java: uber-jar
#     submission only adds files to the jar and talks to Flink's REST API.
# Both run the same apache-beam (pinned in setup.py and constraints.txt), which the
# pipeline proto and the SDK harness must agree on.
#
#   docker build -t iheardai-beam-pipelines .

# --- 1. The Beam Flink job-server uber jar (flink/uberjar/pom.xml) ----------
FROM maven:3.9-eclipse-temurin-17 AS job-server-jar
WORKDIR /build
COPY flink/uberjar/pom.xml pom.xml
RUN mvn -B -q package \
 && cp target/iheard-beam-flink-job-server-2.70.0.jar /beam-flink-job-server.jar

# --- 2. Python 3.11 with the project installed ---------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/iheardai
COPY setup.py constraints.txt ./
COPY beam_pipelines/ beam_pipelines/
COPY transforms/ transforms/
COPY schemas/ schemas/
COPY runners/ runners/
COPY flink/ flink/
COPY io/ io/
COPY collector/ collector/
COPY monitoring/ monitoring/
# The lock's versions (PIP_CONSTRAINT also pins the build environment's
# setuptools and wheel), the same that `make test` passed on.
RUN PIP_CONSTRAINT=/opt/iheardai/constraints.txt pip install . \
 && python -c "import apache_beam, beam_pipelines.frontend, beam_pipelines.text_agent, runners.submit"

COPY --from=job-server-jar /beam-flink-job-server.jar /opt/iheardai/beam-flink-job-server.jar
# runners.submit picks the jar up from here.
ENV FLINK_JOB_SERVER_JAR=/opt/iheardai/beam-flink-job-server.jar

# The worker pool starts one `python` process per SDK worker; nothing needs root.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin iheard
USER 10001
WORKDIR /home/iheard

EXPOSE 50000
CMD ["python", "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port=50000"]
