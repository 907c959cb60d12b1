"""A short run of the chaos suite (bench/chaos.py): a few dozen faults, and nothing lost or wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import postgres_available

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not postgres_available(), reason="initdb/pg_ctl not installed")
def test_short_chaos_run_loses_nothing():
    args = [
        "--seed", "20261130", "--jobs", "40", "--workers", "2", "--kills", "12", "--cancels", "25",
        "--redis-restarts", "1", "--pg-outages", "1", "--pg-down", "3", "--duration", "25",
        "--lost-after", "2", "--reconcile-interval", "0.5", "--settle", "60", "--json",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    lines = done.stdout.strip().splitlines()
    at = max((i for i, line in enumerate(lines) if line.startswith("{")), default=None)
    assert at is not None, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[at])
    summary = "\n".join(lines[at - 7 :])
    for count in ("lost", "stuck", "disagree", "cancelled_then_ran", "recorded_twice"):
        assert report[count] == 0, summary
    assert report["kills"] == 12 and report["cancels"] == 25, summary
    assert report["redis_restarts"] == 1 and report["pg_outages"] == 1, summary
    assert report["jobs_submitted"] + report["submits_refused"] == 40, summary
    assert done.returncode == 0, summary
