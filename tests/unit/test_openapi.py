import json
from pathlib import Path

from boxrun.api.app import create_app
from boxrun.settings import Settings

DOC = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_docs_openapi_is_in_step_with_the_code():
    current = create_app(Settings()).openapi()
    assert json.loads(DOC.read_text()) == json.loads(json.dumps(current)), (
        "docs/openapi.json is stale: run `boxrun openapi > docs/openapi.json`"
    )


def test_submission_body_and_sse_stream_are_documented():
    spec = create_app(Settings()).openapi()
    paths = spec["paths"]
    assert "/api/jobs" in paths and "post" in paths["/api/jobs"]
    body = paths["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/JobCreate")
    assert "text/event-stream" in json.dumps(paths["/api/jobs/{job_id}/logs/stream"])
