"""Check a DVC remote on an S3 object store before any push: that its endpoint answers, takes the keys DVC has
for it and holds its bucket; each failure is one sentence naming what to set (`make remote-store` runs it).

    python -m primer.remote_check [REMOTE]   # default: store
"""

from __future__ import annotations

import sys
import urllib.parse

from primer.errors import PrimerError

TIMEOUT_S = 5
FIX_KEYS = "set S3_ACCESS_KEY and S3_SECRET_KEY in .env to the store's keys and rerun `make remote-store`"


def remote_config(name: str) -> dict:
    """The remote's settings as DVC merges them (.dvc/config, then .dvc/config.local)."""
    from dvc.repo import Repo

    with Repo() as repo:
        remotes = repo.config["remote"]
    if name not in remotes:
        raise PrimerError(f"this repository has no DVC remote '{name}'; run `make remote-store` to add it.")
    return dict(remotes[name])


def check_s3_remote(config: dict, name: str = "store") -> str:
    """One line saying the remote is ready; raises `PrimerError` with the fix when it is not."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    url = urllib.parse.urlsplit(config.get("url", ""))
    if url.scheme != "s3":
        raise PrimerError(f"DVC remote '{name}' is {config.get('url')!r}, not an s3:// URL; run `make remote-store`.")
    bucket, prefix = url.netloc, url.path.strip("/")
    endpoint = config.get("endpointurl") or "https://s3.amazonaws.com"
    if not config.get("access_key_id") or not config.get("secret_access_key"):
        raise PrimerError(f"DVC remote '{name}' has no access_key_id or secret_access_key in .dvc/config.local; "
                          f"{FIX_KEYS}.")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=config.get("region") or "us-east-1",
                          aws_access_key_id=config["access_key_id"], aws_secret_access_key=config["secret_access_key"],
                          config=Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
                                        retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except EndpointConnectionError:
        raise PrimerError(f"the object store at {endpoint} (DVC remote '{name}') is unreachable; start it (`docker "
                          "compose up -d store`), or set S3_ENDPOINT and rerun `make remote-store`.") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":  # docker-compose.yml's store-bucket job makes $BUCKET (by default `primer`)
            raise PrimerError(f"the object store at {endpoint} has no bucket '{bucket}' (DVC remote '{name}'); "
                              f"create it with `docker compose run --rm -e BUCKET={bucket} store-bucket`.") from None
        raise PrimerError(f"the object store at {endpoint} refused the keys of DVC remote '{name}' "
                          f"({code or exc}); {FIX_KEYS}.") from None
    except BotoCoreError as exc:
        raise PrimerError(f"the object store at {endpoint} (DVC remote '{name}') failed: {exc}; check S3_ENDPOINT "
                          "and rerun `make remote-store`.") from None
    return f"DVC remote '{name}': s3://{bucket}/{prefix} at {endpoint} answers with its keys; `dvc push` sends there"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "store"
    try:
        print(check_s3_remote(remote_config(name), name))
    except PrimerError as exc:
        print(f"remote_check: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
