"""Wait for the local S3 API server and make sure the archive bucket exists.

services.sh runs this after starting the server::

    python services/s3/bucket.py --endpoint http://127.0.0.1:19000 --bucket iheardai-archive
    python services/s3/bucket.py --endpoint http://127.0.0.1:19000 --bucket iheardai-archive --check

The moto server keeps its buckets in memory, so after a restart the bucket is
gone until this runs again (services.sh up does that every time). Exit status
2 means ListBuckets did not answer before the timeout, 1 that the bucket is
missing (``--check``) or could not be created.

Secure mode (services.sh --secure): the server speaks HTTPS with the
throwaway CA's certificate (``--ca-bundle``) and checks signatures against
its IAM users. moto lets the first few requests through unsigned
(INITIAL_NO_AUTH_ACTION_COUNT); ``--bootstrap-iam`` spends them on creating
the user ``iheard`` with an access key and writes that key to
``--credentials-file`` (AWS shared-credentials format, mode 0600), which
every later call, and every client, signs with.
"""
import argparse
import configparser
import json
import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

POLL_INTERVAL_S = 0.3


# Unsigned IAM calls --bootstrap-iam makes; services.sh starts moto with
# INITIAL_NO_AUTH_ACTION_COUNT set to this.
BOOTSTRAP_ACTIONS = 3
IAM_USER = "iheard"


def client(endpoint, access_key, secret_key, region, ca_bundle=None, service="s3"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        verify=ca_bundle if ca_bundle else None,
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


def bootstrap_iam(args):
    """Creates the IAM user and its key with the server's unsigned requests;
    writes the key to ``args.credentials_file``."""
    iam = client(args.endpoint, "bootstrap", "bootstrap", args.region, args.ca_bundle, "iam")
    deadline = time.monotonic() + args.timeout_s
    while True:
        try:
            iam.create_user(UserName=IAM_USER)
            break
        except (BotoCoreError, ClientError) as exc:  # server still starting
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no CreateUser answer: {exc!r}") from exc
            time.sleep(POLL_INTERVAL_S)
    iam.put_user_policy(UserName=IAM_USER, PolicyName="archive", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName=IAM_USER)["AccessKey"]
    creds = configparser.ConfigParser()
    creds["default"] = {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }
    tmp = args.credentials_file + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        creds.write(f)
    os.replace(tmp, args.credentials_file)


# An archive-shaped key: `=` and `:` are what clients percent-encode when they
# sign, so a server that checks signatures against the decoded URL refuses it.
PROBE_KEY = "_probe/source=probe/date=1970-01-01/part:0.bin"
PROBE_BODY = bytes(range(256)) * 64  # binary: not valid UTF-8


def probe_signed_keys(s3, bucket):
    """Round-trips one signed, binary object under an archive-shaped key.

    Returns None when the server accepts it, else a message saying why: the
    secure mode relies on moto checking SigV4 against the raw request path
    (moto >= 5.2.6); an older or changed moto refuses these requests, and the
    suite should stop here with that reason, not in a pipeline's upload.
    """
    try:
        s3.put_object(Bucket=bucket, Key=PROBE_KEY, Body=PROBE_BODY)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="_probe/source=probe/date=")
        body = s3.get_object(Bucket=bucket, Key=PROBE_KEY)["Body"].read()
        s3.delete_object(Bucket=bucket, Key=PROBE_KEY)
    except (BotoCoreError, ClientError) as exc:
        return f"signed request for key {PROBE_KEY!r} refused: {exc}"
    if listed.get("KeyCount") != 1 or body != PROBE_BODY:
        return f"object {PROBE_KEY!r} did not round-trip (listed {listed.get('KeyCount')})"
    return None


def moto_version():
    try:
        from importlib.metadata import version
        return version("moto")
    except Exception:  # noqa: BLE001 - a diagnostic only
        return "unknown"


def read_credentials(path):
    creds = configparser.ConfigParser()
    creds.read(path)
    return creds["default"]["aws_access_key_id"], creds["default"]["aws_secret_access_key"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:19000")
    parser.add_argument("--bucket", default="iheardai-archive")
    parser.add_argument("--access-key", default="test")
    parser.add_argument("--secret-key", default="test")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--check", action="store_true", help="verify only")
    parser.add_argument("--ca-bundle", help="CA bundle for an https:// endpoint")
    parser.add_argument("--credentials-file",
                        help="AWS shared-credentials file with the key to sign with "
                        "(instead of --access-key/--secret-key)")
    parser.add_argument("--bootstrap-iam", action="store_true",
                        help="first create the IAM user and write its key to --credentials-file")
    parser.add_argument("--probe", action="store_true",
                        help="then round-trip a signed binary object under an archive-shaped key")
    args = parser.parse_args(argv)

    if args.bootstrap_iam:
        try:
            bootstrap_iam(args)
        except (TimeoutError, BotoCoreError, ClientError) as exc:
            print(f"IAM bootstrap at {args.endpoint}: {exc}", file=sys.stderr)
            return 2
    access_key, secret_key = args.access_key, args.secret_key
    if args.credentials_file:
        access_key, secret_key = read_credentials(args.credentials_file)
    s3 = client(args.endpoint, access_key, secret_key, args.region, args.ca_bundle)
    try:
        buckets = list_buckets(s3, time.monotonic() + args.timeout_s)
    except TimeoutError as exc:
        print(f"S3 at {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    if args.bucket in buckets:
        return probe(s3, args) if args.probe else 0
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
    return probe(s3, args) if args.probe else 0


def probe(s3, args):
    problem = probe_signed_keys(s3, args.bucket)
    if problem is None:
        return 0
    print(f"S3 at {args.endpoint}: {problem}. The secure mode needs the server to run "
          f"moto>=5.2.6,<5.3 (setup.py's test extra, pinned in constraints.txt; this Python has "
          f"moto {moto_version()}); a server started earlier by another Python keeps running: "
          "services/services.sh down --secure, then up again.", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
