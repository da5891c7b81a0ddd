"""Storage on the real SeaweedFS over HTTP: what the store refuses, and what Storage.verify holds to."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from boxrun.dev.procs import Child, free_ports, wait_ready
from boxrun.dev.services import S3_PORTS, S3Credentials, s3_api_url, s3_ready, start_s3
from boxrun.settings import Settings
from boxrun.storage import Storage, sha256_b64
from tests.conftest import S3Server


def make_storage(s3_server: S3Server, verify: Literal["checksum", "readback"] = "checksum") -> Storage:
    storage = Storage(
        Settings(
            s3_endpoint_url=s3_server.endpoint,
            s3_access_key_id=s3_server.creds.access_key,
            s3_secret_access_key=s3_server.creds.secret_key,
            s3_bucket=f"st-{uuid.uuid4().hex[:10]}",
            s3_verify=verify,
        )
    )
    storage.ensure_bucket()
    return storage


@pytest.fixture
def storage(s3_server: S3Server) -> Storage:
    return make_storage(s3_server)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(storage: Storage, key: str, data: bytes) -> httpx.Response:
    url, headers = storage.presign_put(key, len(data), sha(data))
    return httpx.put(url, content=data, headers=headers)


def error_code(resp: httpx.Response) -> str:
    return resp.text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in resp.text else ""


def test_presigned_put_is_bound_to_length_and_checksum_and_verifies_by_head(storage: Storage):
    data = b"artifact bytes\n" * 1000
    url, headers = storage.presign_put("job/a.txt", len(data), sha(data))
    signed = parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "x-amz-checksum-sha256", "host"} <= set(signed)
    resp = httpx.put(url, content=data, headers=headers)
    assert resp.status_code == 200, resp.text
    head = storage.client.head_object(Bucket=storage.bucket, Key="job/a.txt", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256_b64(sha(data)) and head["ContentLength"] == len(data)
    assert storage.verify("job/a.txt", len(data), sha(data)).ok


def test_forged_signature_is_refused_and_does_not_overwrite(storage: Storage):
    original, attack = b"the real artifact", b"the attacker's bytes"
    assert upload(storage, "job/keep.bin", original).status_code == 200
    url, headers = storage.presign_put("job/keep.bin", len(attack), sha(attack))
    sig = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    forged = url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    resp = httpx.put(forged, content=attack, headers=headers)
    assert resp.status_code == 403 and error_code(resp) == "SignatureDoesNotMatch"
    got = storage.client.get_object(Bucket=storage.bucket, Key="job/keep.bin")["Body"].read()
    assert got == original
    assert storage.verify("job/keep.bin", len(original), sha(original)).ok


def test_checksum_and_length_headers_are_signed(storage: Storage):
    """A URL issued for one body cannot carry another, even with that body's own checksum."""
    data, other = b"issued for these bytes", b"but these are sent!!!!"  # same length
    url, headers = storage.presign_put("job/x", len(data), sha(data))
    swapped = httpx.put(url, content=other, headers={**headers, "x-amz-checksum-sha256": sha256_b64(sha(other))})
    assert swapped.status_code == 403 and error_code(swapped) == "SignatureDoesNotMatch"
    unchecked = {k: v for k, v in headers.items() if k.lower() != "x-amz-checksum-sha256"}
    assert httpx.put(url, content=data, headers=unchecked).status_code == 403
    longer = httpx.put(url, content=data + b"!", headers={**headers, "Content-Length": str(len(data) + 1)})
    assert longer.status_code == 403
    assert storage.verify("job/x", len(data), sha(data)).reason == "object missing: 404"


def test_body_not_matching_the_signed_checksum_is_refused(storage: Storage):
    data = b"what the box hashed"
    url, headers = storage.presign_put("job/bad.bin", len(data), sha(data))
    resp = httpx.put(url, content=b"X" * len(data), headers=headers)  # corrupted in transit
    assert resp.status_code == 400 and error_code(resp) == "BadDigest"
    assert not storage.verify("job/bad.bin", len(data), sha(data)).ok


def test_anonymous_requests_are_refused(storage: Storage, s3_server: S3Server):
    assert upload(storage, "job/secret.txt", b"private").status_code == 200
    base = f"{s3_server.endpoint}/{storage.bucket}"
    assert httpx.get(f"{base}/job/secret.txt").status_code == 403
    assert httpx.put(f"{base}/job/new.txt", content=b"x").status_code == 403
    assert httpx.get(base).status_code == 403  # list the bucket
    assert httpx.get(f"{base}?list-type=2").status_code == 403
    assert httpx.get(s3_server.endpoint).status_code == 403  # list buckets
    assert httpx.delete(f"{base}/job/secret.txt").status_code == 403
    assert storage.verify("job/secret.txt", 7, sha(b"private")).ok


def test_presigned_get_works_and_a_tampered_one_does_not(storage: Storage):
    assert upload(storage, "job/d.txt", b"download me").status_code == 200
    url = storage.presign_get("job/d.txt", filename="d.txt")
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.content == b"download me"
    assert 'filename="d.txt"' in resp.headers["content-disposition"]
    assert httpx.get(url.replace("job%2Fd.txt", "job%2Fe.txt").replace("job/d.txt", "job/e.txt")).status_code == 403


def test_verify_refuses_missing_wrong_size_and_wrong_checksum(storage: Storage):
    data = b"0123456789"
    assert storage.verify("job/none", len(data), sha(data)).reason == "object missing: 404"
    assert upload(storage, "job/v", data).status_code == 200
    assert storage.verify("job/v", len(data), sha(data)).ok
    assert storage.verify("job/v", len(data) + 1, sha(data)).reason == f"size {len(data)} != {len(data) + 1}"
    other = b"9876543210"  # same size, other bytes
    assert storage.verify("job/v", len(data), sha(other)).reason == "stored checksum differs"


def test_checksum_mode_refuses_an_object_without_a_stored_sha256(storage: Storage, s3_server: S3Server):
    """Written some other way (no x-amz-checksum-sha256): "checksum" cannot vouch for it, "readback" can."""
    data = b"no sha256 kept for me"
    storage.client.put_object(Bucket=storage.bucket, Key="job/plain", Body=data, ChecksumAlgorithm="CRC32")
    assert storage.verify("job/plain", len(data), sha(data)).reason == "store kept no checksum"
    readback = make_storage(s3_server, verify="readback")
    readback.bucket = storage.bucket
    assert readback.verify("job/plain", len(data), sha(data)).ok
    assert readback.verify("job/plain", len(data), sha(b"x" * len(data))).reason == "read-back sha256 differs"


def test_ensure_bucket_is_idempotent(storage: Storage):
    storage.ensure_bucket()
    storage.ensure_bucket()
    assert storage.client.head_bucket(Bucket=storage.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


async def test_objects_and_checksums_survive_a_kill_and_a_restart_on_other_ports(tmp_path):
    """The store keeps acknowledged writes on disk: killed right after (SIGKILL, as the stack's
    stop does after S3_STOP_TIMEOUT_S), started again on the same data dir, everything verifies."""
    creds = S3Credentials.generate()

    async def start() -> tuple[Child, Storage]:
        ports = free_ports(S3_PORTS)
        child = start_s3(tmp_path / "data", ports, creds, tmp_path / "logs")
        await wait_ready(child, lambda: s3_ready(ports, creds), timeout=60)
        storage = Storage(
            Settings(
                s3_endpoint_url=s3_api_url(ports),
                s3_access_key_id=creds.access_key,
                s3_secret_access_key=creds.secret_key,
            )
        )
        await asyncio.to_thread(storage.ensure_bucket)
        return child, storage

    child, storage = await start()
    blobs = {f"job/{i}.bin": bytes([i]) * (i * 997 + 1) for i in range(50)}
    async with httpx.AsyncClient() as http:
        for key, data in blobs.items():
            url, headers = storage.presign_put(key, len(data), sha(data))
            assert (await http.put(url, content=data, headers=headers)).status_code == 200
    child.proc.kill()
    child.wait_stopped()
    child, storage = await start()
    try:
        for key, data in blobs.items():
            assert storage.verify(key, len(data), sha(data)).ok, key
        assert storage.client.get_object(Bucket=storage.bucket, Key="job/49.bin")["Body"].read() == blobs["job/49.bin"]
    finally:
        child.stop()
