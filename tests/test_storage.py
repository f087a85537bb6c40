"""nanoseg.storage against a real S3 server (SeaweedFS, see tests/s3server.py)."""

import os
import socket
import time

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from nanoseg import storage
from nanoseg.errors import NanosegError


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_parse_s3_url():
    assert storage.parse_s3_url("s3://bkt/a/b.tif") == ("bkt", "a/b.tif")
    assert storage.parse_s3_url("s3://bkt") == ("bkt", "")
    with pytest.raises(NanosegError, match="not an S3 URL"):
        storage.parse_s3_url("/local/file")


def test_connect_rejects_bad_endpoint_and_reads_env(monkeypatch, s3_server):
    with pytest.raises(NanosegError, match="not a URL"):
        storage.connect("127.0.0.1:9000")
    for name in storage.ENDPOINT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    client = storage.connect()
    assert client.meta.endpoint_url == s3_server.endpoint_url
    storage.ensure_bucket(client, "env-bucket")
    storage.ensure_bucket(client, "env-bucket")  # idempotent
    assert storage.bucket_exists(client, "env-bucket")


def test_file_and_folder_roundtrip_with_multipart(tmp_path, s3_client, s3_bucket):
    rng = os.urandom
    src = tmp_path / "src"
    small = _write(src / "a.txt", b"hello nanoseg\n")
    big = _write(src / "sub" / "big.bin", rng(11 * storage.MB))  # 3 parts of 5 MiB
    _write(src / "sub" / "deeper" / "c.csv", b"x,y\n1,2\n")
    keys = storage.upload_folder(s3_client, src, s3_bucket, "runs/r1", chunk_mb=5)
    assert keys == ["runs/r1/a.txt", "runs/r1/sub/big.bin", "runs/r1/sub/deeper/c.csv"]
    assert storage.list_keys(s3_client, s3_bucket, "runs/") == keys
    assert storage.remote_sha256(s3_client, s3_bucket, keys[1]) == storage.file_sha256(big)
    head = s3_client.head_object(Bucket=s3_bucket, Key=keys[1], ChecksumMode="ENABLED")
    assert head["ContentLength"] == big.stat().st_size
    assert head.get("ChecksumSHA256", "-3").endswith("-3")  # per-part checksums: 3 parts

    dst = tmp_path / "dst"
    files = storage.download_folder(s3_client, s3_bucket, "runs/r1", dst, chunk_mb=5)
    assert sorted(p.relative_to(dst).as_posix() for p in files) == [
        "a.txt", "sub/big.bin", "sub/deeper/c.csv"]
    for file in files:
        assert file.read_bytes() == (src / file.relative_to(dst)).read_bytes()
    assert storage.download_file(s3_client, s3_bucket, "runs/r1/a.txt", tmp_path / "one.txt") \
        == storage.file_sha256(small)


def test_unchanged_file_is_not_sent_again(tmp_path, s3_client, s3_bucket):
    file = _write(tmp_path / "f.bin", b"abc" * 1000)
    sent = []
    storage.upload_file(s3_client, file, s3_bucket, "f.bin", callback=sent.append)
    assert sum(sent) == file.stat().st_size
    sent.clear()
    storage.upload_file(s3_client, file, s3_bucket, "f.bin", callback=sent.append)
    assert sent == []
    file.write_bytes(b"changed")
    storage.upload_file(s3_client, file, s3_bucket, "f.bin", callback=sent.append)
    assert sum(sent) == len(b"changed")


def test_missing_bucket_and_key(tmp_path, s3_client, s3_bucket):
    file = _write(tmp_path / "f.txt", b"data")
    with pytest.raises(NanosegError, match="Bucket 'no-such-bucket' does not exist"):
        storage.upload_file(s3_client, file, "no-such-bucket", "f.txt")
    with pytest.raises(NanosegError, match="Bucket 'no-such-bucket' does not exist"):
        storage.download_file(s3_client, "no-such-bucket", "f.txt", tmp_path / "out.txt")
    with pytest.raises(NanosegError, match="Bucket 'no-such-bucket' does not exist"):
        storage.ensure_bucket(s3_client, "no-such-bucket", create=False)
    with pytest.raises(NanosegError, match=f"s3://{s3_bucket}/nope.txt does not exist"):
        storage.download_file(s3_client, s3_bucket, "nope.txt", tmp_path / "out.txt")
    with pytest.raises(NanosegError, match="Nothing under"):
        storage.download_folder(s3_client, s3_bucket, "nope", tmp_path / "out")
    with pytest.raises(NanosegError, match="does not exist or is not a file"):
        storage.upload_file(s3_client, tmp_path / "absent.txt", s3_bucket, "x")
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


@pytest.mark.parametrize("which", ["secret", "access key"])
def test_wrong_credentials(tmp_path, s3_server, s3_bucket, which):
    key, secret = s3_server.access_key, s3_server.secret_key
    if which == "secret":
        secret = "wrong-" + secret
    else:
        key = "NOSUCHKEY123"
    client = storage.connect(s3_server.endpoint_url, key, secret, retries=1)
    file = _write(tmp_path / "f.txt", b"data")
    with pytest.raises(NanosegError, match="credentials"):
        storage.upload_file(client, file, s3_bucket, "f.txt")
    with pytest.raises(NanosegError, match="credentials"):
        storage.list_keys(client, s3_bucket)



def test_anonymous_access_is_refused(s3_server, s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    anonymous = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED))
    with pytest.raises(NanosegError, match="Access denied"):
        storage.list_keys(anonymous, s3_bucket)
    with pytest.raises(NanosegError, match="Access denied"):
        storage.download_file(anonymous, s3_bucket, "k", "unused", verify=False)


def test_unreachable_endpoint(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = storage.connect(f"http://127.0.0.1:{port}", "k", "s", retries=2,
                             connect_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(NanosegError, match="Cannot reach the S3 endpoint http://127.0.0.1"):
        storage.upload_file(client, _write(tmp_path / "f.txt", b"x"), "bkt", "f.txt")
    assert time.monotonic() - t0 < 30


def test_corrupted_object_is_detected(tmp_path, s3_client, s3_bucket):
    file = _write(tmp_path / "good.bin", b"good bytes " * 100)
    sha = storage.upload_file(s3_client, file, s3_bucket, "obj.bin")
    # Tamper behind nanoseg's back: new bytes, old sha256 metadata.
    s3_client.put_object(Bucket=s3_bucket, Key="obj.bin", Body=b"evil bytes " * 100,
                         Metadata={storage.SHA256_META: sha})
    dest = tmp_path / "out" / "obj.bin"
    with pytest.raises(NanosegError, match="Checksum mismatch for s3://.*was not written"):
        storage.download_file(s3_client, s3_bucket, "obj.bin", dest)
    assert not dest.exists() and os.listdir(dest.parent) == []  # no partial file

    # Overwritten with a raw put (no sha256 recorded): refused unless verify=False.
    s3_client.put_object(Bucket=s3_bucket, Key="obj.bin", Body=b"raw")
    with pytest.raises(NanosegError, match="records no sha256"):
        storage.download_file(s3_client, s3_bucket, "obj.bin", dest)
    assert not dest.exists()
    storage.download_file(s3_client, s3_bucket, "obj.bin", dest, verify=False)
    assert dest.read_bytes() == b"raw"


def test_server_killed_during_multipart_upload(tmp_path, weed_factory):
    server = weed_factory()
    client = server.client(retries=2, connect_timeout=1, read_timeout=5)
    storage.ensure_bucket(client, "data")
    big = _write(tmp_path / "big.bin", os.urandom(26 * storage.MB))  # 6 parts of 5 MiB
    sent = []

    def kill_midway(nbytes):
        sent.append(nbytes)
        if sum(sent) > 7 * storage.MB:
            server.kill()

    with pytest.raises(NanosegError, match="Cannot reach the S3 endpoint"):
        storage.upload_file(client, big, "data", "big.bin", chunk_mb=5, callback=kill_midway)
    assert 0 < sum(sent) < big.stat().st_size

    server.start()  # same data dir and ports: as after a crash and restart
    assert storage.list_keys(client, "data") == []  # no partial object became visible
    assert storage.abort_incomplete_uploads(client, "data") == 1  # the parts already sent
    with pytest.raises(NanosegError, match="does not exist"):
        storage.download_file(client, "data", "big.bin", tmp_path / "got.bin")
    storage.upload_file(client, big, "data", "big.bin", chunk_mb=5)  # the re-run completes
    got = tmp_path / "got.bin"
    assert storage.download_file(client, "data", "big.bin", got) == storage.file_sha256(big)
    assert got.read_bytes() == big.read_bytes()
    assert storage.abort_incomplete_uploads(client, "data") == 0
