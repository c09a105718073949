"""``python -m collector``: serves the collector with uvicorn.

    eval "$(bash services/services.sh env)"; eval "$(bash flink/cluster.sh env)"
    python -m collector --port 8000 --allowed_origins=https://shop.example.com
"""
from __future__ import annotations

import sys

import uvicorn

from collector.app import create_app
from collector.settings import parse_args
from monitoring.logs import configure_logging


def main(argv=None) -> int:
    settings, args = parse_args(argv)
    configure_logging(args.log_format, args.log_level.upper())
    # log_config=None: uvicorn's own loggers go through configure_logging's handler.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None,
                access_log=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
