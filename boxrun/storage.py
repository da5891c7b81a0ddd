"""Object storage over the S3 API: presigned PUT/GET, uploads and HEADs, artifact verification."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import IO, Any

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError, FlexibleChecksumError

from boxrun.settings import Settings

_READ_CHUNK = 1 << 20


def sha256_b64(hex_digest: str) -> str:
    """S3 carries SHA-256 checksums base64-encoded; boxrun records them as hex."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _client(settings: Settings, endpoint: str | None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}
        ),
    )


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str | None = None


class Storage:
    """A thin, synchronous boto3 wrapper; async callers run it in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.verify_mode = settings.s3_verify
        self.expiry_s = settings.presign_expiry_s
        self.download_ttl_s = settings.download_url_ttl_s  # links handed to people (downloads.py)
        self.client: Any = _client(settings, settings.s3_endpoint_url)
        # Presigned URLs are used by boxes and browsers: sign them for the host those reach.
        public = settings.s3_public_endpoint_url
        self.presigner: Any = _client(settings, public) if public else self.client

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists; the API and the worker both call this at start."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise  # e.g. 403: wrong credentials, say so rather than try to create it
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise  # the other process created it first: fine

    def put(self, key: str, fileobj: IO[bytes], sha256_hex: str) -> None:
        """Upload from the control plane itself (log archives, POST /api/files), checksummed: the
        store refuses bytes that do not hash to `sha256_hex`."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=fileobj, ChecksumSHA256=sha256_b64(sha256_hex))

    def head(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        size: int = head["ContentLength"]
        return size

    def delete(self, key: str) -> None:
        """Delete one object; no error if there is none (deletion is retried after a crash)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`, a page (1,000) at a time; returns
        how many there were. Idempotent: a rerun after a crash deletes what is left."""
        deleted = 0
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1000)
            keys = [item["Key"] for item in page.get("Contents", [])]
            if not keys:
                return deleted
            for key in keys:  # one DELETE each: every S3 store takes it (DeleteObjects needs Content-MD5)
                self.client.delete_object(Bucket=self.bucket, Key=key)
            deleted += len(keys)

    def presign_put(self, key: str, size: int, sha256_hex: str) -> tuple[str, dict[str, str]]:
        """A PUT URL bound to the object's length and SHA-256; returns (url, headers to send)."""
        checksum = sha256_b64(sha256_hex)
        url = self.presigner.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentLength": size,
                "ChecksumAlgorithm": "SHA256",
                "ChecksumSHA256": checksum,
            },
            ExpiresIn=self.expiry_s,
        )
        headers = {
            "x-amz-checksum-sha256": checksum,
            "x-amz-sdk-checksum-algorithm": "SHA256",
            "Content-Length": str(size),
        }
        return url, headers

    def presign_get(self, key: str, *, filename: str | None = None, expires_s: int | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self.presigner.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_s or self.expiry_s
        )
        return url

    def verify(self, key: str, size: int, sha256_hex: str) -> Verification:
        """Check the stored object against the manifest (size and SHA-256).

        "checksum" (the default): one HEAD with ChecksumMode=ENABLED, no bytes read. The object
        must have the manifest's size and the store must return a SHA-256 equal to the manifest's.
        What that proves rests on the store: the only way boxes write is presign_put's URL, which
        signs x-amz-checksum-sha256 (so the header cannot be dropped or changed without a 403),
        and a store that checks checksums refuses a body that does not hash to it (400 BadDigest)
        and keeps the checked value. SeaweedFS and AWS S3 do both (tests/integration/
        test_storage.py checks SeaweedFS). The stored value is then the hash the store computed
        of the bytes it received, so a mismatch or a missing checksum fails the artifact. It
        does not re-detect corruption at rest after the PUT (the store's own job: SeaweedFS keeps
        a CRC per needle and checks it on read).

        "readback": for stores that do not check or keep checksums (moto, some older gateways):
        read every byte back and hash it here. Costs a full download per artifact."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            return Verification(False, f"object missing: {_error_code(exc)}")
        if head["ContentLength"] != size:
            return Verification(False, f"size {head['ContentLength']} != {size}")
        stored = head.get("ChecksumSHA256")
        if stored is not None and stored != sha256_b64(sha256_hex):
            return Verification(False, "stored checksum differs")
        if self.verify_mode == "checksum":
            return Verification(True) if stored else Verification(False, "store kept no checksum")
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        read = 0
        try:
            for chunk in iter(lambda: body.read(_READ_CHUNK), b""):
                digest.update(chunk)
                read += len(chunk)
        except FlexibleChecksumError:  # botocore saw the bytes disagree with the stored checksum
            return Verification(False, "read-back sha256 differs")
        if read != size or digest.hexdigest() != sha256_hex:
            return Verification(False, "read-back sha256 differs")
        return Verification(True)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))
