/*
 * Flink's PrometheusReporter binds its HTTP endpoint to every interface and
 * has no option to choose one (Flink 1.19). This reporter is the same
 * reporter bound to one host (default 127.0.0.1), so the project's local
 * cluster listens on loopback only.
 *
 * flink/cluster.sh compiles it at install time against the distribution's
 * plugins/metrics-prometheus jar and flink-dist, and drops the jar next to
 * that plugin. It lives in Flink's package because the registry it exports
 * (AbstractPrometheusReporter.registry) is package-private; both jars share
 * the plugin's class loader, hence the runtime package.
 *
 * config.yaml:
 *   metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.LoopbackPrometheusReporterFactory
 *   metrics.reporter.prom.host: 127.0.0.1
 *   metrics.reporter.prom.port: 19249-19258
 */
package org.apache.flink.metrics.prometheus;

import io.prometheus.client.exporter.HTTPServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.Iterator;
import java.util.Properties;
import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;
import org.apache.flink.util.NetUtils;

public class LoopbackPrometheusReporterFactory implements MetricReporterFactory {

  @Override
  public MetricReporter createMetricReporter(Properties properties) {
    String host = properties.getProperty("host", "127.0.0.1");
    String ports = properties.getProperty("port", "9249");
    return new LoopbackPrometheusReporter(host, NetUtils.getPortRangeFromString(ports));
  }

  /** PrometheusReporter with the HTTP server bound to {@code host}. */
  static final class LoopbackPrometheusReporter extends AbstractPrometheusReporter {
    private final HTTPServer httpServer;

    LoopbackPrometheusReporter(String host, Iterator<Integer> ports) {
      HTTPServer server = null;
      while (server == null && ports.hasNext()) {
        int port = ports.next();
        try {
          server = new HTTPServer(new InetSocketAddress(host, port), registry);
          log.info("Started PrometheusReporter HTTP server on {}:{}.", host, port);
        } catch (IOException e) {
          log.debug("Could not start PrometheusReporter HTTP server on {}:{}.", host, port, e);
        }
      }
      if (server == null) {
        throw new RuntimeException("Could not start PrometheusReporter HTTP server on any port of the range on " + host);
      }
      httpServer = server;
    }

    @Override
    public void close() {
      httpServer.stop();
      super.close();
    }
  }
}
