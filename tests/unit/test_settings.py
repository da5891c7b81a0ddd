from urllib.parse import urlsplit

import pytest

from boxrun.settings import Settings
from boxrun.storage import Storage


def test_placeholder_secrets_refused_outside_dev_only_where_used():
    prod = Settings(environment="production")
    with pytest.raises(ValueError, match="BOXRUN_API_TOKEN, BOXRUN_S3_SECRET_ACCESS_KEY"):
        prod.require_secrets("api_token", "s3_secret_access_key")
    prod.require_secrets()  # an agent uses neither secret
    Settings(environment="production", api_token="real").require_secrets("api_token")
    Settings().require_secrets("api_token", "s3_secret_access_key")  # dev allows placeholders


def test_env_vars_are_read_with_the_prefix(monkeypatch):
    monkeypatch.setenv("BOXRUN_API_PORT", "9999")
    monkeypatch.setenv("BOXRUN_S3_ENDPOINT_URL", "")  # empty means unset
    s = Settings()
    assert s.api_port == 9999 and s.s3_endpoint_url is None


def test_presigned_urls_use_the_public_endpoint():
    storage = Storage(Settings(s3_endpoint_url="http://minio:9000", s3_public_endpoint_url="https://s3.example.com"))
    url, headers = storage.presign_put("jobs/j/files_out/a", 3, "00" * 32)
    assert urlsplit(url).netloc == "s3.example.com" and headers["Content-Length"] == "3"
    assert urlsplit(storage.presign_get("jobs/j/files_out/a")).netloc == "s3.example.com"
    assert storage.client.meta.endpoint_url == "http://minio:9000"
