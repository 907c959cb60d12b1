"""The job loop end to end: submit, run on real workers, list, show, cancel, retry."""

from __future__ import annotations

import json

from tests.conftest import wait_for


def job(run, job_id: int) -> dict:
    out = run("show", str(job_id), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_submit_runs_to_completion_with_progress_and_result(run, start_worker):
    start_worker()
    out = run("submit", "Test Job", "-d", "Testing", "-t", "sleep", "-a", "seconds=0.3", "-a", "steps=3")
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout)
    done = wait_for(lambda: job(run, job_id)["status"] == "completed" and job(run, job_id), 30)
    assert done["progress"] == {"current": 3, "total": 3, "message": "slept 3"}
    assert done["result"] == {"slept": 0.3}
    assert done["attempts"] == 1 and done["worker"]
    listed = json.loads(run("list", "--status", "completed", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
