"""Object-store access shared by every stage: S3 (AWS or the embedded SeaweedFS) or a local folder.

Every function takes either an ``s3://bucket/key`` URI or a plain local path, so the same code
writes to a bucket in production and to ``./videos`` on a laptop. Settings come from the
environment unless passed explicitly: the endpoint from ``JEPA_S3_ENDPOINT`` or the AWS SDKs' own
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; keys from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), else the SDKs' default chain
(``AWS_PROFILE``, web identity as IRSA on EKS, instance roles).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import io

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from botocore.config import Config
from botocore.exceptions import ClientError

S3_SCHEME = "s3://"
ENDPOINT_VARIABLES = ("JEPA_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where the S3 endpoint URL is read from; the first one set wins. None set means AWS."""
# SeaweedFS accepts any key pair unless configured otherwise; botocore still wants one to sign.
PLACEHOLDER_KEY = "jepa-local"
# SeaweedFS 4.48 rejects the checksum trailers the AWS SDKs add to uploads by default (pyarrow's
# multipart UploadPart failed with "InvalidAccessKeyId"): checksums only when required. pyarrow's
# SDK reads the variable whenever a filesystem is created, so `RetryingS3FileSystem` sets it in
# every process that builds or unpickles one; `jepa stack env` hands it to other tools.
CHECKSUM_SETTING = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}

# Retries: a restart of the object store must cost the job a pause, not the job. A SIGKILLed and
# restarted SeaweedFS refuses connections for ~4-7 s here (a graceful stop answers 500 for ~15 s
# first), so both clients retry refused connections and 5xx for well over 10 s, then give up.
# boto3 "standard" mode waits rand(0,1) * min(50 ms * 2**i, 20 s) before retry i (botocore 1.44):
# 5 attempts gave up after < 0.75 s. With 14, all retries together wait 53 s on average (106 s at
# most); a 10 s outage outlasts them for < 1 request in 10^5, a 20 s one for ~2 in 1000.
BOTO_MAX_ATTEMPTS = 14
# A pre-flight check (can the job reach its bucket at all?) answers a wrong endpoint in well under a
# second: 3 attempts wait < 0.15 s together.
PREFLIGHT_ATTEMPTS = 3
# pyarrow (Ray Train checkpoint uploads, parquet reads): the AWS SDK's default strategy backs off
# 0, 50, 100, 200 ms, ... doubling, without jitter or a retry quota, so 10 retries ride out any
# outage of up to 25.5 s and a dead endpoint fails after that. (pyarrow's own default, the
# "standard" strategy with 3 attempts, gave up after ~2 s.)
PYARROW_RETRIES = 10


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is and how to sign requests to it."""

    endpoint: str | None = None
    """S3 endpoint URL, e.g. ``http://127.0.0.1:8333``; ``None`` means AWS."""
    access_key: str | None = None
    """``None`` lets boto3/pyarrow use their default credential chain (profile, IRSA, instance role)."""
    secret_key: str | None = None
    region: str = "us-east-1"
    session_token: str | None = None
    """For temporary keys (``AWS_SESSION_TOKEN``)."""

    @classmethod
    def from_env(cls) -> S3Settings:
        endpoint = next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)
        access_key = os.environ.get("AWS_ACCESS_KEY_ID") or None
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
        session_token = os.environ.get("AWS_SESSION_TOKEN") or None
        if not (access_key and secret_key):
            access_key = secret_key = session_token = None  # the default chain signs
            if endpoint and not _default_chain_has_credentials(os.environ.get("AWS_PROFILE")):
                access_key = secret_key = PLACEHOLDER_KEY  # e.g. SeaweedFS with no keys configured
        return cls(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            session_token=session_token,
        )


@functools.lru_cache(maxsize=8)
def _default_chain_has_credentials(profile: str | None) -> bool:
    """Whether boto3's default chain finds credentials (looked up once per process and profile:
    on a machine without an instance role the metadata lookup costs about a second)."""
    return boto3.session.Session(profile_name=profile).get_credentials() is not None


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str
    """S3 ETag without quotes; for local files ``"<mtime_ns>-<size>"`` (cheap change detector)."""


class URIError(ValueError):
    """A malformed ``s3://`` URI; the message shows it."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key may be empty (bucket root)."""
    if not is_s3(uri):
        raise URIError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise URIError(f"S3 URI has no bucket name: {uri!r}")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto an S3 URI or local path without doubling slashes."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


_CLIENTS: dict[tuple[int, S3Settings, int], object] = {}


def s3_client(settings: S3Settings | None = None, max_attempts: int = BOTO_MAX_ATTEMPTS):
    """A boto3 S3 client, cached per process (creating one costs ~50 ms), that retries refused
    connections, timeouts and 5xx for tens of seconds (``BOTO_MAX_ATTEMPTS``); a pre-flight
    check passes ``PREFLIGHT_ATTEMPTS`` to fail fast instead."""
    settings = settings or S3Settings.from_env()
    cache_key = (os.getpid(), settings, max_attempts)  # clients must not cross a fork
    client = _CLIENTS.get(cache_key)
    if client is None:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key,
            aws_session_token=settings.session_token,
            region_name=settings.region,
            config=Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                # Path-style works with every S3 clone; virtual-host style needs DNS per bucket.
                s3={"addressing_style": "path"} if settings.endpoint else {},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        _CLIENTS[cache_key] = client
    return client


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem whose pickle keeps its retry strategy.

    Ray ships the filesystem to Train workers, the Train controller and Data tasks by pickling it,
    and pyarrow 25's ``__reduce__`` drops ``retry_strategy`` (apache/arrow#47348): every copy would
    fall back to 3 attempts and a storage restart would fail the checkpoint upload.
    """

    def __init__(self, *, retry_strategy: pafs.S3RetryStrategy, **kwargs):
        if kwargs.get("endpoint_override"):  # an S3 clone, not AWS: see CHECKSUM_SETTING
            for name, value in CHECKSUM_SETTING.items():
                os.environ.setdefault(name, value)
        super().__init__(retry_strategy=retry_strategy, **kwargs)
        self.retry_strategy = retry_strategy

    def __reduce__(self):
        _, (kwargs,) = super().__reduce__()
        return _rebuild_s3fs, (kwargs, self.retry_strategy)


def _rebuild_s3fs(kwargs: dict, retry_strategy: pafs.S3RetryStrategy) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(retry_strategy=retry_strategy, **kwargs)


def pyarrow_fs(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem for Ray Data / parquet readers; paths are then ``bucket/key``.

    It retries refused connections and 5xx for 25 s (``PYARROW_RETRIES``), also in the processes
    it is pickled to. Timeouts stay at the SDK's: a refused connection fails at once, and a
    request that stalls for 3 s is aborted and retried.
    """
    settings = settings or S3Settings.from_env()
    kwargs: dict = {"region": settings.region, "retry_strategy": pafs.AwsDefaultS3RetryStrategy(PYARROW_RETRIES)}
    if settings.access_key and settings.secret_key:
        kwargs.update(access_key=settings.access_key, secret_key=settings.secret_key,
                      session_token=settings.session_token)
    if settings.endpoint:
        parsed = urlparse(settings.endpoint if "://" in settings.endpoint else f"http://{settings.endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http")
    return RetryingS3FileSystem(**kwargs)


def arrow_location(uri: str, settings: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) for an ``s3://`` URI or a local path: what pyarrow's and
    Ray Data's readers and writers take."""
    return (pyarrow_fs(settings) if is_s3(uri) else pafs.LocalFileSystem()), arrow_path(uri)


def arrow_path(uri: str) -> str:
    """The path of ``uri`` in its pyarrow filesystem: ``bucket/key`` (no trailing slash) for
    ``s3://``, the absolute path for a local one. For many URIs of one filesystem, which
    ``arrow_location`` would build once per URI."""
    if is_s3(uri):
        bucket, key = parse_uri(uri)
        return f"{bucket}/{key}".rstrip("/")
    return os.path.abspath(uri)


def ensure_bucket(bucket: str, settings: S3Settings | None = None) -> bool:
    """Create the bucket unless it exists (writes to a missing bucket fail on SeaweedFS); True if
    this call created it, so a caller can say so.

    Accepts a bare name or an ``s3://bucket/...`` URI; a local path just gets its folder made.
    """
    if "/" in bucket and not is_s3(bucket):
        existed = Path(bucket).is_dir()
        Path(bucket).mkdir(parents=True, exist_ok=True)
        return not existed
    name = parse_uri(bucket)[0] if is_s3(bucket) else bucket
    client = s3_client(settings)
    try:
        client.head_bucket(Bucket=name)
        return False
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        client.create_bucket(Bucket=name)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    return True


def put_bytes(uri: str, data: bytes, settings: S3Settings | None = None) -> None:
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see a half-written file
        return
    bucket, key = parse_uri(uri)
    if not key:
        raise URIError(f"S3 URI has no object key: {uri!r}")
    s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data)


def put_table(uri: str, table: pa.Table, settings: S3Settings | None = None, **write_options) -> None:
    """A whole table as one parquet object (``write_options`` go to ``pq.write_table``), serialised
    here and uploaded with ``put_bytes``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **write_options)
    put_bytes(uri, sink.getvalue().to_pybytes(), settings)


def get_table(uri: str, settings: S3Settings | None = None) -> pa.Table:
    """A whole (small) parquet object as a table; missing raises ``FileNotFoundError``."""
    return pq.read_table(io.BytesIO(get_bytes(uri, settings)))


def get_bytes(uri: str, settings: S3Settings | None = None) -> bytes:
    """Whole object as bytes; a missing object raises ``FileNotFoundError`` for S3 and local alike."""
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = parse_uri(uri)
    try:
        return s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket", "404"):
            raise FileNotFoundError(uri) from err
        raise


def _matches(name: str, suffixes: tuple[str, ...]) -> bool:
    return not suffixes or name.lower().endswith(suffixes)


def list_objects(
    prefix_uri: str,
    suffixes: Iterable[str] | None = (".mp4",),
    settings: S3Settings | None = None,
    page_size: int = 1000,
) -> Iterator[ObjectInfo]:
    """Objects under a folder-like prefix, streamed page by page (buckets may hold millions).

    ``s3://b/raw`` lists ``raw/...`` (not ``raw2/...``). Suffixes match case-insensitively;
    ``None`` or ``()`` lists everything. S3 yields keys in lexicographic order.
    """
    wanted = tuple(s.lower() for s in (suffixes or ()))
    if not is_s3(prefix_uri):
        root = Path(prefix_uri)
        if not root.exists():
            return
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith(".") and _matches(path.name, wanted):
                st = path.stat()
                yield ObjectInfo(str(path), st.st_size, f"{st.st_mtime_ns}-{st.st_size}")
        return
    bucket, prefix = parse_uri(prefix_uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    paginator = s3_client(settings).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}):
        for obj in page.get("Contents", []):
            if _matches(obj["Key"], wanted):
                yield ObjectInfo(f"{S3_SCHEME}{bucket}/{obj['Key']}", int(obj["Size"]), obj["ETag"].strip('"'))
