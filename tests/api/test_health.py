"""GET /api/health, in-process."""

import httpx


async def test_health_answers_ok_with_database_and_temporal_up(anon: httpx.AsyncClient) -> None:
    resp = await anon.get("/api/health")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == body["database"] == body["temporal"] == "ok"
    assert body["version"]
