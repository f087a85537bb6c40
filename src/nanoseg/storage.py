"""Files and folders in S3-compatible object storage (AWS S3, MinIO, SeaweedFS).

Every object written by :func:`upload_file` carries the sha256 of its bytes in
its metadata (``x-amz-meta-sha256``) and an S3 ``ChecksumSHA256`` checked by the
server on arrival. :func:`download_file` writes to a temporary file next to the
destination, checks the sha256 and only then renames it into place, so a
corrupted or half-transferred object never shows up as a finished file.
Large files go up and down in parts (multipart, :class:`boto3.s3.transfer.TransferConfig`);
multipart objects only exist once complete, so an interrupted upload leaves no
object behind and re-running it starts cleanly.

The endpoint and credentials come from the arguments of :func:`connect` or,
when those are None, from the environment: ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL`` for the endpoint (none: AWS),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any other boto3
credential source) for the keys. Problems the user can fix (wrong endpoint,
rejected credentials, missing bucket or key, checksum mismatch) raise
:class:`~nanoseg.errors.NanosegError`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import boto3
import botocore.exceptions as bce
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from nanoseg.errors import NanosegError

ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
SHA256_META = "sha256"
MB = 1024 * 1024
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "UnrecognizedClientException",
}
_HINT = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (for the local server: "
         "`make s3-up` writes them to .s3/env)")


def endpoint_from_env() -> str | None:
    """Return the S3 endpoint URL named by the environment, or None (AWS)."""
    for name in ENDPOINT_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def connect(endpoint_url=None, access_key=None, secret_key=None, *, region=None,
            retries=5, connect_timeout=5.0, read_timeout=60.0):
    """Return a boto3 S3 client with retries (exponential backoff) and timeouts.

    Parameters
    ----------
    endpoint_url : str, optional
        ``http(s)://host:port`` of an S3-compatible server; None reads
        :data:`ENDPOINT_ENV_VARS`, and failing those uses AWS.
    access_key, secret_key : str, optional
        Credentials; None uses boto3's usual sources (``AWS_ACCESS_KEY_ID``...).
    region : str, optional
        Region; None uses ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` or us-east-1.
    retries : int
        Total attempts per request (botocore "standard" retry mode, with
        exponential backoff and jitter) for throttling and connection errors.
    connect_timeout, read_timeout : float
        Seconds.
    """
    endpoint_url = endpoint_url or endpoint_from_env()
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        raise NanosegError(f"S3 endpoint {endpoint_url!r} is not a URL: give it as "
                           "http://host:port or https://host (AWS_ENDPOINT_URL).")
    region = (region or os.environ.get("AWS_DEFAULT_REGION")
              or os.environ.get("AWS_REGION") or "us-east-1")
    config = Config(
        retries={"max_attempts": max(1, int(retries)), "mode": "standard"},
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name=region, config=config)
    except ValueError as exc:
        raise NanosegError(f"S3 endpoint {endpoint_url!r} is not usable: {exc}.") from exc


def transfer_config(chunk_mb=8, max_concurrency=4) -> TransferConfig:
    """Multipart settings: files above ``chunk_mb`` MiB go in ``chunk_mb`` MiB parts."""
    size = max(5, int(chunk_mb)) * MB  # S3 parts are at least 5 MiB
    return TransferConfig(multipart_threshold=size, multipart_chunksize=size,
                          max_concurrency=max_concurrency, use_threads=max_concurrency > 1)


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/key`` into ``("bucket", "some/key")``."""
    if not url.startswith("s3://") or len(url) <= 5:
        raise NanosegError(f"{url!r} is not an S3 URL: write it as s3://bucket/key.")
    bucket, _, key = url[5:].partition("/")
    return bucket, key


def file_sha256(path) -> str:
    """Return the hex sha256 of the file at ``path``."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _chain(exc):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
    return seen


def _as_nanoseg(exc, client, action, bucket=None, key=None):
    """Translate a boto3/botocore failure into a NanosegError, or return None."""
    where = client.meta.endpoint_url
    target = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else where
    for err in _chain(exc):
        if isinstance(err, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return NanosegError(f"No S3 credentials for {action} {target}: set "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass them.")
        if isinstance(err, (bce.ConnectionError, bce.HTTPClientError)):
            return NanosegError(
                f"Cannot reach the S3 endpoint {where} while {action} {target} ({err}). "
                "Check the endpoint URL (AWS_ENDPOINT_URL) and that the server is running "
                "(`make s3-up` starts the local one); then run the command again.")
        if isinstance(err, bce.ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _CREDENTIAL_CODES:
                return NanosegError(f"The S3 server {where} rejected the credentials "
                                    f"({code}) while {action} {target}: {_HINT}.")
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return NanosegError(
                    f"Access denied by {where} while {action} {target}: the credentials are "
                    f"wrong or lack permission for bucket {bucket!r}; {_HINT}.")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and not key):
                return NanosegError(f"Bucket {bucket!r} does not exist at {where}: create it "
                                    "(nanoseg.storage.ensure_bucket) or fix the bucket name.")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NanosegError(f"{target} does not exist at {where}: check the key, "
                                    "or upload it first.")
            if code == "InvalidBucketName":
                return NanosegError(f"{bucket!r} is not a valid bucket name (3-63 lowercase "
                                    "letters, digits, '-' or '.').")
            return NanosegError(f"S3 error while {action} {target} at {where}: "
                                f"{code}: {error.get('Message', err)}")
    return None


@contextmanager
def _s3_errors(client, action, bucket=None, key=None):
    try:
        yield
    except NanosegError:
        raise
    except Exception as exc:
        err = _as_nanoseg(exc, client, action, bucket, key)
        if err is None:
            raise
        raise err from exc


def bucket_exists(client, bucket: str) -> bool:
    """Return whether ``bucket`` exists (False on 404; other problems raise)."""
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:
        if isinstance(exc, bce.ClientError) and str(
                exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
            return False
        err = _as_nanoseg(exc, client, "checking bucket", bucket)
        if err is None:
            raise
        raise err from exc


def _require_bucket(client, bucket: str) -> None:
    if not bucket_exists(client, bucket):
        raise NanosegError(f"Bucket {bucket!r} does not exist at {client.meta.endpoint_url}: "
                           "create it (nanoseg.storage.ensure_bucket) or fix the bucket name.")


def ensure_bucket(client, bucket: str, create: bool = True) -> None:
    """Check that ``bucket`` exists and is accessible; create it if ``create``."""
    if not create:
        return _require_bucket(client, bucket)
    if bucket_exists(client, bucket):
        return
    region = client.meta.region_name
    kwargs = {}
    if region and region != "us-east-1" and "amazonaws.com" in client.meta.endpoint_url:
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    with _s3_errors(client, "creating bucket", bucket):
        try:
            client.create_bucket(Bucket=bucket, **kwargs)
        except bce.ClientError as exc:  # created meanwhile by us: fine
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise


def remote_sha256(client, bucket: str, key: str) -> str | None:
    """Return the sha256 recorded for an object, or None if it records none.

    Reads the ``sha256`` metadata, else a whole-object S3 ``ChecksumSHA256``.
    A missing bucket or key raises :class:`NanosegError`.
    """
    _require_bucket(client, bucket)
    with _s3_errors(client, "reading", bucket, key):
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    if head.get("Metadata", {}).get(SHA256_META):
        return head["Metadata"][SHA256_META]
    checksum = head.get("ChecksumSHA256") or ""
    if checksum and "-" not in checksum:  # "-N": per-part composite, not the file's
        return base64.b64decode(checksum).hex()
    return None


def upload_file(client, path, bucket: str, key: str, *, skip_unchanged=True,
                chunk_mb=8, callback=None) -> str:
    """Upload one file with its sha256; return the sha256.

    Parameters
    ----------
    client : S3 client from :func:`connect`.
    path : path-like
        Local file.
    bucket, key : str
        Destination object; the bucket must exist (see :func:`ensure_bucket`).
    skip_unchanged : bool
        Do not send the file again if the object already holds the same sha256
        (re-running an interrupted folder upload only sends what is missing).
    chunk_mb : int
        Multipart threshold and part size in MiB.
    callback : callable, optional
        Called with the number of bytes sent by each chunk (progress bars).
    """
    path = Path(path)
    if not path.is_file():
        raise NanosegError(f"{path} does not exist or is not a file: nothing to upload.")
    sha = file_sha256(path)
    _require_bucket(client, bucket)
    if skip_unchanged:
        with _s3_errors(client, "checking", bucket, key):
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except bce.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
                head = {}  # not there yet
        if (head.get("Metadata", {}).get(SHA256_META) == sha
                and head.get("ContentLength") == path.stat().st_size):
            return sha
    extra = {"Metadata": {SHA256_META: sha}, "ChecksumAlgorithm": "SHA256"}
    with _s3_errors(client, f"uploading {path} to", bucket, key):
        client.upload_file(str(path), bucket, key, ExtraArgs=extra,
                           Config=transfer_config(chunk_mb), Callback=callback)
        head = client.head_object(Bucket=bucket, Key=key)
    if head.get("Metadata", {}).get(SHA256_META) != sha or \
            head.get("ContentLength") != path.stat().st_size:
        raise NanosegError(f"s3://{bucket}/{key} does not match {path} after upload "
                           "(size or sha256 differs): upload it again.")
    return sha


def download_file(client, bucket: str, key: str, path, *, verify=True, chunk_mb=8) -> str:
    """Download one object to ``path``, checking its sha256; return the sha256.

    The bytes go to a temporary file beside ``path`` that replaces ``path`` only
    once complete and verified; on any failure no file is left behind.
    An object that records no sha256 raises unless ``verify`` is False.
    """
    path = Path(path)
    expected = remote_sha256(client, bucket, key)
    if verify and expected is None:
        raise NanosegError(f"s3://{bucket}/{key} records no sha256 (not uploaded by "
                           "nanoseg.storage): upload it again with nanoseg, or download "
                           "with verify=False.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with _s3_errors(client, "downloading", bucket, key):
            client.download_file(bucket, key, tmp, Config=transfer_config(chunk_mb))
        actual = file_sha256(tmp)
        if verify and actual != expected:
            raise NanosegError(
                f"Checksum mismatch for s3://{bucket}/{key}: its bytes have sha256 "
                f"{actual[:12]}... but the object records {expected[:12]}...; the stored "
                f"object is corrupted or was changed behind nanoseg's back. {path} was not "
                "written: upload the file again from a good copy.")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it the usual mode
        os.replace(tmp, path)
        return actual
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def list_keys(client, bucket: str, prefix: str = "") -> list[str]:
    """Return the keys under ``prefix`` (all pages), sorted."""
    keys = []
    with _s3_errors(client, "listing", bucket, prefix or None):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def abort_incomplete_uploads(client, bucket: str, prefix: str = "") -> int:
    """Abort multipart uploads left unfinished under ``prefix``; return how many.

    Their parts are invisible (no object exists) but use space; on AWS an
    ``AbortIncompleteMultipartUpload`` lifecycle rule does the same automatically.
    """
    count = 0
    with _s3_errors(client, "cleaning unfinished uploads in", bucket):
        for page in client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                              UploadId=upload["UploadId"])
                count += 1
    return count


def upload_folder(client, folder, bucket: str, prefix: str, **kwargs) -> list[str]:
    """Upload every file under ``folder`` to ``prefix/<relative path>``; return the keys.

    Unchanged files already in the bucket are skipped, so re-running an
    interrupted upload completes it. ``kwargs`` go to :func:`upload_file`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NanosegError(f"{folder} is not a folder: nothing to upload.")
    keys = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = str(PurePosixPath(prefix.strip("/"), file.relative_to(folder).as_posix()))
        upload_file(client, file, bucket, key, **kwargs)
        keys.append(key)
    return keys


def download_folder(client, bucket: str, prefix: str, folder, **kwargs) -> list[Path]:
    """Download every object under ``prefix/`` into ``folder``; return the files.

    Each file is verified and written atomically (see :func:`download_file`).
    """
    folder = Path(folder).resolve()
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = [k for k in list_keys(client, bucket, prefix) if not k.endswith("/")]
    if not keys:
        raise NanosegError(f"Nothing under s3://{bucket}/{prefix} at "
                           f"{client.meta.endpoint_url}: check the prefix.")
    files = []
    for key in keys:
        dest = (folder / key[len(prefix):]).resolve()
        if folder not in dest.parents:
            raise NanosegError(f"s3://{bucket}/{key} would land outside {folder}: refusing it.")
        download_file(client, bucket, key, dest, **kwargs)
        files.append(dest)
    return files
