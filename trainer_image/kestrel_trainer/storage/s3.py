"""The S3 client: `s3://bucket/key` URLs, the standard AWS configuration, and one-line errors.

Configuration is the AWS SDKs' own environment (never a flag, so nothing secret reaches a process listing):
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or ~/.aws/credentials (AWS_PROFILE), or a
web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, what EKS' IRSA sets); AWS_REGION / AWS_DEFAULT_REGION;
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible stores (MinIO, versitygw, Ceph, GCS's interoperability
endpoint https://storage.googleapis.com); AWS_CA_BUNDLE for a private CA. The client is MinIO's Python SDK
(docs/storage.md says why not boto3). Errors name the URL and the endpoint, never a key.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from kestrel_trainer.errors import KestrelError

SCHEME = "s3://"
# Codes a store answers when it does not accept the credentials (versitygw: XAdminUserNotFound for an unknown key).
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "XAdminUserNotFound", "InvalidToken",
                              "ExpiredToken", "TokenRefreshRequired", "InvalidClientTokenId",
                              "AuthorizationHeaderMalformed"})


class StorageError(KestrelError):
    """Object storage refused or failed a request: one line naming the URL (exit code 2)."""

    exit_code = 2


def is_url(path: object) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


@dataclass(frozen=True)
class Url:
    bucket: str
    key: str  # no leading "/"; "" for the bucket's root

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def child(self, rel: str) -> Url:
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return Url(self.bucket, base + rel)

    @property
    def folder_prefix(self) -> str:
        """The key as a folder prefix: "" or ending with "/"."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


def parse(url: str) -> Url:
    if not is_url(url):
        raise StorageError(f"{url}: not an s3://bucket/key URL")
    rest = url[len(SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{url}: no bucket name (s3://bucket/prefix)")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"{url}: '..' is not allowed in an object key")
    clean = "/".join(parts) + ("/" if key.endswith("/") and parts else "")
    return Url(bucket, clean)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def endpoint() -> tuple[str, bool, Optional[str]]:
    """(host[:port], https, region) from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS_REGION."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    raw = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if not raw:
        return (f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"), True, region
    parsed = urlparse(raw if "://" in raw else f"https://{raw}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StorageError(f"AWS_ENDPOINT_URL{'_S3' if os.environ.get('AWS_ENDPOINT_URL_S3') else ''}={raw!r} is "
                           "not an http(s)://host[:port] URL")
    return parsed.netloc, parsed.scheme == "https", region or "us-east-1"


def endpoint_name() -> str:
    host, secure, _ = endpoint()
    return f"{'https' if secure else 'http'}://{host}"


def _credentials() -> Any:
    from minio.credentials import AWSConfigProvider, ChainedProvider, EnvAWSProvider, IamAwsProvider

    providers: list[Any] = [EnvAWSProvider()]
    if os.environ.get("AWS_PROFILE") or os.path.exists(os.path.expanduser("~/.aws/credentials")) \
            or os.environ.get("AWS_SHARED_CREDENTIALS_FILE"):
        providers.append(AWSConfigProvider(profile=os.environ.get("AWS_PROFILE")))
    # Instance and pod identities: only when their environment says so (probing the EC2 metadata address
    # elsewhere only costs a timeout).
    if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") \
            or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or os.environ.get("KESTREL_S3_INSTANCE_ROLE"):
        providers.append(IamAwsProvider())
    return ChainedProvider(providers)


_client_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def client() -> Any:
    """A minio.Minio for the configured endpoint (one per configuration, shared by threads: it is thread-safe)."""
    host, secure, region = endpoint()
    import hashlib

    secret = hashlib.sha256(f"{os.environ.get('AWS_SECRET_ACCESS_KEY')}|{os.environ.get('AWS_SESSION_TOKEN')}"
                            .encode()).hexdigest()  # a changed secret gets a new client; the key holds no secret
    config = (host, secure, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), secret)
    with _client_lock:
        if config not in _clients:
            import certifi
            import urllib3
            from minio import Minio

            ca = os.environ.get("AWS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where()
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=10, read=120), maxsize=16, cert_reqs="CERT_REQUIRED", ca_certs=ca,
                retries=urllib3.Retry(total=4, backoff_factor=0.5, status_forcelist=[500, 502, 503, 504]))
            _clients[config] = Minio(host, secure=secure, region=region, credentials=_credentials(), http_client=http)
        return _clients[config]


def error(url: object, err: BaseException, doing: str = "") -> StorageError:
    """The one line for a failed request on `url` (an S3 error code, an unreachable endpoint, no credentials)."""
    from minio.error import S3Error

    where = endpoint_name()
    what = f" ({doing})" if doing else ""
    if isinstance(err, StorageError):
        return err
    if isinstance(err, S3Error):
        code = err.code or "error"
        if code == "NoSuchBucket":
            bucket = err.bucket_name or parse(str(url)).bucket
            return StorageError(f"{url}: bucket {bucket!r} does not exist at {where}")
        if code == "NoSuchKey":
            return StorageError(f"{url}: no such object at {where}")
        if code in CREDENTIAL_CODES:
            return StorageError(f"{url}: {where} refused the credentials ({code}){what}: check AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY")
        if code == "AccessDenied":
            return StorageError(f"{url}: access denied by {where}{what}: check the credentials (AWS_ACCESS_KEY_ID, "
                                "AWS_SECRET_ACCESS_KEY) and their permissions")
        return StorageError(f"{url}: {where} answered {code}{what}: {err.message}")
    if isinstance(err, ValueError) and "credential" in str(err).lower():
        return StorageError(f"{url}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                            "AWS_PROFILE, or a web identity)")
    reason = getattr(err, "reason", None) or err
    return StorageError(f"{url}: cannot reach the S3 endpoint {where}{what}: {type(reason).__name__}: "
                        f"{str(reason).splitlines()[0][:200] if str(reason) else ''}")


def list_objects(url: Url) -> Iterator[ObjectInfo]:
    """Every object under the folder prefix of `url` (recursive), in key order."""
    try:
        for obj in client().list_objects(url.bucket, prefix=url.folder_prefix or None, recursive=True):
            # (recursive: a key ending in "/" is a folder marker object, kept: an empty folder is reported as such)
            yield ObjectInfo(obj.object_name, (obj.etag or "").strip('"'), int(obj.size or 0))
    except Exception as err:  # noqa: BLE001 - every failure becomes one line
        raise error(url, err, "listing") from None


def stat(url: Url) -> Optional[ObjectInfo]:
    """The object at `url`, or None when there is none."""
    from minio.error import S3Error

    try:
        st = client().stat_object(url.bucket, url.key)
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return None
        if err.code in ("AccessDenied", "Forbidden"):  # a HEAD answer has no error code: a listing names it
            try:
                next(iter(client().list_objects(url.bucket, prefix=url.key)), None)
            except Exception as precise:  # noqa: BLE001
                raise error(url, precise) from None
        raise error(url, err) from None
    except Exception as err:  # noqa: BLE001
        raise error(url, err) from None
    return ObjectInfo(url.key, (st.etag or "").strip('"'), int(st.size or 0))


def download(url: Url, expected: ObjectInfo, target: str) -> None:
    """Write the object to `target` (the caller renames it into place), checking it is the version listed."""
    try:
        response = client().get_object(url.bucket, url.key)
    except Exception as err:  # noqa: BLE001
        raise error(url, err, "downloading") from None
    try:
        etag = (response.headers.get("ETag") or "").strip('"')
        if expected.etag and etag and etag != expected.etag:
            raise StorageError(f"{url}: the object changed while it was being read (ETag {etag}, listed "
                               f"{expected.etag}); run the command again")
        size = 0
        with open(target, "wb") as fh:
            for chunk in response.stream(1 << 20):
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if size != expected.size:
            raise StorageError(f"{url}: read {size} bytes, the object has {expected.size}")
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001
        raise error(url, err, "downloading") from None
    finally:
        response.close()
        response.release_conn()


PART_SIZE = 16 << 20  # multipart uploads above this: parts of 16 MiB, the object appears only when complete


def upload(url: Url, path: str) -> tuple[ObjectInfo, os.stat_result]:
    """PUT the file at `path` as one object (multipart above PART_SIZE; either way the object appears whole or not
    at all). Returns the object's info and the stat of the version that was read."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        try:
            result = client().put_object(url.bucket, url.key, fh, st.st_size, part_size=PART_SIZE)
        except Exception as err:  # noqa: BLE001
            raise error(url, err, "uploading") from None
    return ObjectInfo(url.key, (result.etag or "").strip('"'), st.st_size), st


def remove(url: Url) -> None:
    try:
        client().remove_object(url.bucket, url.key)
    except Exception as err:  # noqa: BLE001
        raise error(url, err, "removing") from None
