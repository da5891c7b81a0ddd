"""Operating a whole `boxrun dev` stack (subprocesses, as a newcomer starts it): every metrics URL of
endpoints.json answers with what its process counted after a real job, the probes answer, and the
processes' JSON log lines carry the job's id and the request id of its submission, from the API
through the workflow to the box and back."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack


async def samples_of(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(url)
    assert resp.status_code == 200, (url, resp.status_code)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


async def test_metrics_probes_and_logs_of_a_real_job(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, boxes=1, env={"BOXRUN_LOG_LEVEL": "DEBUG"}) as fs, fs.api() as api:
        await _check(api, fs.endpoints)


async def _check(api: httpx.AsyncClient, endpoints: dict) -> None:
    for key in ("api_metrics_url", "worker_metrics_url", "health_url", "ready_url"):
        assert key in endpoints, key
    box = endpoints["boxes"][0]
    assert box["metrics_url"].endswith("/metrics")
    async with httpx.AsyncClient(timeout=10) as anon:
        assert (await anon.get(endpoints["health_url"])).status_code == 200
        ready = await anon.get(endpoints["ready_url"])
        assert ready.status_code == 200 and ready.json()["storage"] == "ok", ready.text

    before_api = await samples_of(endpoints["api_metrics_url"])
    request_id = f"ops-{uuid.uuid4().hex[:12]}"
    resp = await api.post(
        "/api/jobs",
        json={"script": "print('one')\nprint('two')", "box": box["name"]},
        headers={"X-Request-ID": request_id},
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["x-request-id"] == request_id
    job_id = resp.json()["id"]

    async def done() -> bool:
        return (await api.get(f"/api/jobs/{job_id}")).json()["state"] == "completed"

    await wait_for(done, timeout=60, what="the job to complete")

    api_now = await samples_of(endpoints["api_metrics_url"])
    assert total(api_now, "boxrun_jobs_submitted_total") == total(before_api, "boxrun_jobs_submitted_total") + 1
    assert total(api_now, "boxrun_job_submit_to_running_seconds_count") >= 1
    assert total(api_now, "boxrun_log_ingest_lines_total") >= 2

    # a clean exit 0 is recorded `completed` by the API that took the box's result
    completed = "boxrun_jobs_finished_total"
    assert total(api_now, completed, state="completed") == total(before_api, completed, state="completed") + 1

    async def worker_counted() -> dict | None:
        now = await samples_of(endpoints["worker_metrics_url"])
        # the workflow's own finish_job absorbs that end; the workflow completes a moment later
        return now if total(now, "temporal_workflow_completed_total", workflow_type="JobWorkflow") else None

    worker = await wait_for(worker_counted, timeout=20, what="the worker's exporter to count the workflow completed")
    assert total(worker, "temporal_activity_execution_latency_count") >= 1

    async def agent_counted() -> dict | None:
        now = await samples_of(box["metrics_url"])
        return now if total(now, "boxrun_agent_jobs_run_total", result="completed") >= 1 else None

    agent = await wait_for(agent_counted, timeout=20, what="the agent's metrics")
    assert total(agent, "boxrun_agent_log_lines_sent_total") >= 2

    logs = Path(endpoints["data_dir"]) / "logs"
    # JSON lines (stderr is a file): the API's access line of the submission, and the worker's
    # activity lines of the job, with the job id and the submission's request id
    api_lines = [line for line in json_lines(logs / "api.log") if line.get("request_id") == request_id]
    assert any("POST /api/jobs" in line["message"] for line in api_lines), api_lines[:5]
    worker_lines = [line for line in json_lines(logs / "worker.log") if line.get("job_id") == job_id]
    assert worker_lines, "no worker line names the job"
    assert all(line.get("request_id") == request_id for line in worker_lines), worker_lines[:5]
    agent_lines = [line for line in json_lines(logs / f"agent-{box['name']}.log") if line.get("job_id") == job_id]
    assert agent_lines, "no agent line names the job"
    # the request id reached the box (the offer keeps it, the bundle names it) ...
    assert all(line.get("box") == box["name"] and line.get("request_id") == request_id for line in agent_lines)
    # ... and comes back with the box's calls about the job once claimed (log batches, result)
    agent_calls = [line["message"] for line in api_lines if f"/api/agent/jobs/{job_id}" in line["message"]]
    assert any("/result" in m for m in agent_calls), api_lines[:10]
