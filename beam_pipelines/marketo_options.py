"""Options of the Marketo extractor and the Marketo pipeline.

Kept beside ``beam_pipelines/options.py`` (whose ``IheardOptions`` and
``resolve_connections`` they reuse) so the Marketo source adds flags without
touching the shared ones. Like there, the environment is read through
``iheard_io.settings``: ``resolve_marketo_api`` falls back to the seed's
``MARKETO_BASE_URL``, ``MARKETO_CLIENT_ID`` and ``MARKETO_CLIENT_SECRET`` when a
flag is absent.
"""
from __future__ import annotations

import dataclasses
import typing

from apache_beam.options.pipeline_options import PipelineOptions

from iheard_io import settings

__all__ = ["MarketoOptions", "MarketoApi", "resolve_marketo_api", "MARKETO_TOPIC"]

MARKETO_TOPIC = "marketo_leads_delta"


class MarketoOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        api = parser.add_argument_group("marketo api (extractor)")
        api.add_argument("--marketo_base_url",
                         help="e.g. https://123-ABC-456.mktorest.com. Default: env MARKETO_BASE_URL.")
        api.add_argument("--marketo_client_id", help="Default: env MARKETO_CLIENT_ID.")
        api.add_argument("--marketo_client_secret", help="Default: env MARKETO_CLIENT_SECRET.")
        api.add_argument("--marketo_since",
                         help="ISO datetime to start from when no high-water mark is stored "
                         "(default: 24 hours ago).")
        api.add_argument("--marketo_extract_name", default="marketo_leads",
                         help="Name of the high-water-mark row (one per extraction).")
        api.add_argument("--marketo_max_retries", type=int, default=6,
                         help="Retries per API call for transient errors (HTTP 5xx, network, "
                         "606, 615).")
        api.add_argument("--marketo_rate_limit_wait_seconds", type=float, default=20.0,
                         help="Wait after a 606 (rate limit) answer.")
        api.add_argument("--marketo_calls_per_20s", type=int, default=100,
                         help="Client-side pacing (Marketo allows 100 calls per 20 s); 0: off.")
        api.add_argument("--continuous", action="store_true",
                         help="Keep extracting every --period_seconds until stopped.")
        api.add_argument("--period_seconds", type=float, default=300.0,
                         help="Pause between extractions with --continuous.")
        api.add_argument("--output_jsonl",
                         help="Write the deltas to this JSON-lines file instead of Kafka "
                         "(the mark still advances after the file is flushed and synced).")
        api.add_argument("--bulk_from",
                         help="Backfill with the bulk lead export: leads updated from this ISO "
                         "datetime (to --bulk_to, default now), in jobs of at most 31 days.")
        api.add_argument("--bulk_to", help="End of the bulk backfill (ISO datetime).")

        lead = parser.add_argument_group("marketo leads (transformation)")
        lead.add_argument("--marketo_user_id_field", default="iheardUserId",
                          help="Lead field holding the application's user id (joins the lead "
                          "to frontend sessions and agent conversations).")
        lead.add_argument("--priority_score_threshold", type=int, default=80,
                          help="Score above which a highly engaged lead is for immediate follow-up.")
        lead.add_argument("--nurture_probability_threshold", type=float, default=0.6,
                          help="Conversion probability above which a lead is nurtured.")
        lead.add_argument("--no_engagement_lookup", action="store_true",
                          help="Score without the frontend/agent engagement of the lead.")


@dataclasses.dataclass(frozen=True)
class MarketoApi:
    base_url: str
    client_id: str
    client_secret: str


def resolve_marketo_api(opts: MarketoOptions, env=None) -> MarketoApi:
    """Flags, else the seed's MARKETO_* variables; raises ``ValueError``
    naming what is missing."""
    from_env = settings.marketo_api_values(env)
    values = {name: getattr(opts, f"marketo_{name}") or from_env[name] for name in from_env}
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise ValueError(
            "Marketo API settings missing: " + ", ".join(
                f"--marketo_{k} (or MARKETO_{k.upper()})" for k in missing))
    return MarketoApi(**typing.cast(dict, values))
