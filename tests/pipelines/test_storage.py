import hashlib
import inspect
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import S3FileSystem

from pipelines import storage
from pipelines.storage import S3Settings


# --- unit: no server --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, expected",
    [("s3://bucket/a/b.mp4", ("bucket", "a/b.mp4")), ("s3://bucket", ("bucket", "")), ("s3://bucket/", ("bucket", ""))],
)
def test_parse_uri(uri, expected):
    assert storage.parse_uri(uri) == expected


@pytest.mark.parametrize("uri", ["bucket/key", "http://host/key", "s3:/bucket/key", "s3://", "s3:///key"])
def test_parse_uri_rejects_malformed(uri):
    with pytest.raises(ValueError, match="S3 URI"):
        storage.parse_uri(uri)


def test_settings_from_env(monkeypatch):
    for name in ["JEPA_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]:
        monkeypatch.delenv(name, raising=False)
    assert S3Settings.from_env() == S3Settings(endpoint=None, access_key=None, secret_key=None, region="us-east-1")

    monkeypatch.setenv("JEPA_S3_ENDPOINT", "http://127.0.0.1:8333")
    local = S3Settings.from_env()
    assert local.endpoint == "http://127.0.0.1:8333"
    assert local.access_key and local.secret_key  # placeholders: SeaweedFS accepts any key

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert S3Settings.from_env() == S3Settings("http://127.0.0.1:8333", "AK", "SK", "eu-west-1")


def test_pyarrow_fs_uses_endpoint_host_and_scheme():
    fs = storage.pyarrow_fs(S3Settings("http://127.0.0.1:8333", "AK", "SK"))
    expected = S3FileSystem(
        endpoint_override="127.0.0.1:8333", scheme="http", access_key="AK", secret_key="SK", region="us-east-1"
    )
    assert fs.equals(expected)
    assert not fs.equals(S3FileSystem(endpoint_override="127.0.0.1:8333", scheme="https", access_key="AK", secret_key="SK", region="us-east-1"))


def test_join_uri(tmp_path):
    assert storage.join_uri("s3://b/p/", "x.mp4") == "s3://b/p/x.mp4"
    assert storage.join_uri(str(tmp_path), "x.mp4") == str(tmp_path / "x.mp4")


def test_local_paths_round_trip_and_list(tmp_path):
    root = tmp_path / "videos"
    storage.put_bytes(str(root / "b" / "2.mp4"), b"two")
    storage.put_bytes(str(root / "a" / "1.MP4"), b"one")
    storage.put_bytes(str(root / "a" / "1.state.parquet"), b"x")
    assert storage.get_bytes(str(root / "b" / "2.mp4")) == b"two"
    listed = list(storage.list_objects(str(root)))
    assert [o.uri for o in listed] == [str(root / "a" / "1.MP4"), str(root / "b" / "2.mp4")]
    assert [o.size for o in listed] == [3, 3] and all(o.etag for o in listed)
    assert len(list(storage.list_objects(str(root), suffixes=None))) == 3
    assert list(storage.list_objects(str(tmp_path / "missing"))) == []
    with pytest.raises(FileNotFoundError):
        storage.get_bytes(str(root / "nope.mp4"))


# --- integration: real SeaweedFS ----------------------------------------------------------------


@pytest.fixture
def prefix(s3_env) -> str:
    return f"s3://{s3_env.bucket}/storage-test-{uuid.uuid4().hex[:8]}"


@pytest.mark.integration
def test_put_get_round_trip(prefix):
    data = bytes(range(256)) * 100
    storage.put_bytes(f"{prefix}/x/blob.bin", data)
    assert storage.get_bytes(f"{prefix}/x/blob.bin") == data
    with pytest.raises(FileNotFoundError):
        storage.get_bytes(f"{prefix}/x/missing.bin")


@pytest.mark.integration
def test_list_objects_pages_filters_and_streams(prefix):
    for name in ["c.mp4", "a.mp4", "b.MP4", "a.state.parquet", "sub/d.mp4"]:
        storage.put_bytes(f"{prefix}/{name}", name.encode())
    storage.put_bytes(f"{prefix}2/e.mp4", b"sibling prefix, not listed")
    listing = storage.list_objects(prefix, page_size=2)
    assert inspect.isgenerator(listing)
    objects = list(listing)
    assert [o.uri.removeprefix(prefix + "/") for o in objects] == ["a.mp4", "b.MP4", "c.mp4", "sub/d.mp4"]
    assert objects[0].size == 5 and objects[0].etag == hashlib.md5(b"a.mp4").hexdigest()
    everything = list(storage.list_objects(prefix + "/", suffixes=None, page_size=2))
    assert len(everything) == 5


@pytest.mark.integration
def test_ensure_bucket_creates_once(s3_env):
    name = f"made-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(name)
    storage.ensure_bucket(f"s3://{name}/some/prefix")  # idempotent, accepts a URI
    storage.put_bytes(f"s3://{name}/k", b"v")
    assert storage.get_bytes(f"s3://{name}/k") == b"v"


@pytest.mark.integration
def test_pyarrow_fs_reads_what_boto3_wrote(prefix):
    table = pa.table({"a": [1, 2, 3]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.put_bytes(f"{prefix}/t.parquet", sink.getvalue().to_pybytes())
    bucket, key = storage.parse_uri(f"{prefix}/t.parquet")
    assert pq.read_table(f"{bucket}/{key}", filesystem=storage.pyarrow_fs()).equals(table)
