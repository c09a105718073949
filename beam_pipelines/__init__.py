"""iheardAI's Beam pipelines, one runnable module per source."""
import warnings

# apache-beam[gcp] imports Google client libraries that warn about this Python
# and grpcio version on every start; they say nothing about these pipelines.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
