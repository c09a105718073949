"""Operations: structured logs, probes of the running system (Kafka lag, Flink
jobs, databases), the Prometheus exporter, alert rules and Grafana dashboards.

``monitoring.logs`` is the one logging setup the pipelines and the collector
call; ``monitoring.probes`` measures; ``monitoring.exporter`` publishes the
measurements for Prometheus; ``prometheus/`` holds the alert rules and their
unit tests, ``grafana/`` the dashboards.
"""
