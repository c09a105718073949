"""Wait for the local S3 API server and make sure the archive bucket exists.

services.sh runs this after starting the server::

    python services/s3/bucket.py --endpoint http://127.0.0.1:19000 --bucket iheardai-archive
    python services/s3/bucket.py --endpoint http://127.0.0.1:19000 --bucket iheardai-archive --check

The moto server keeps its buckets in memory, so after a restart the bucket is
gone until this runs again (services.sh up does that every time). Exit status
2 means ListBuckets did not answer before the timeout, 1 that the bucket is
missing (``--check``) or could not be created.
"""
import argparse
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

POLL_INTERVAL_S = 0.3


def client(endpoint, access_key, secret_key, region):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        # Path-style URLs: a local endpoint has no per-bucket DNS names.
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=10,
        ),
    )


def list_buckets(s3, deadline):
    """Returns bucket names once the server answers ListBuckets."""
    last_error = None
    while time.monotonic() < deadline:
        try:
            return {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        except (BotoCoreError, ClientError) as exc:  # server still starting
            last_error = exc
            time.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"no ListBuckets answer: {last_error!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:19000")
    parser.add_argument("--bucket", default="iheardai-archive")
    parser.add_argument("--access-key", default="test")
    parser.add_argument("--secret-key", default="test")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--check", action="store_true", help="verify only")
    args = parser.parse_args(argv)

    s3 = client(args.endpoint, args.access_key, args.secret_key, args.region)
    try:
        buckets = list_buckets(s3, time.monotonic() + args.timeout_s)
    except TimeoutError as exc:
        print(f"S3 at {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    if args.bucket in buckets:
        return 0
    if args.check:
        print(f"bucket {args.bucket} missing", file=sys.stderr)
        return 1
    try:
        s3.create_bucket(Bucket=args.bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            print(f"create_bucket {args.bucket}: {exc}", file=sys.stderr)
            return 1
    s3.head_bucket(Bucket=args.bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
