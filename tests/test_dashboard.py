"""`jobctl dashboard`: rq-dashboard on jobctl's Redis, JSON only, loopback unless protected; in a browser."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, wait_for

# The dashboard reads Redis only: one SQL backend is enough for the tests that store jobs.
SQLITE = pytest.mark.parametrize("backend", ["sqlite"])

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
NAME = "Resize <b>photos</b> & [bold]x[/]"  # must show exactly as typed, never as HTML
AUTH = ("ops", "s3cret-Pa55")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def submit(run: Any, name: str, *args: str) -> int:
    out = run("submit", name, *args)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def status(job_id: int) -> str:
    """The job's status, read from the store in this process (quicker than `jobctl show`)."""
    from jobctl import service

    return str(service.get_job(job_id).status)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_dashboard(background: Any, *args: str, **extra_env: str) -> tuple[Any, str]:
    """`jobctl dashboard ARGS` in the background, and the address it printed."""
    import sys

    env = {**os.environ, **extra_env}
    process = background([sys.executable, "-m", "jobctl", "dashboard", "--port", "0", *args], env=env)
    out = process.wait_for_output("Press Ctrl-C to stop.")
    match = re.search(r"Dashboard at (http://\S+)", out)
    assert match, out
    return process, match.group(1)


# ---- refusing to start ----


@SQLITE
def test_a_non_loopback_address_without_credentials_is_refused(run):
    out = run("dashboard", "--host", "0.0.0.0")
    assert out.returncode == 2
    assert out.stderr.startswith("Error: refusing to serve the dashboard on 0.0.0.0 without credentials")
    assert "JOBCTL_DASHBOARD_PASSWORD" in out.stderr and "Traceback" not in out.stderr
    half = run("dashboard", JOBCTL_DASHBOARD_PASSWORD="a password and no user")
    assert half.returncode == 2
    assert half.stderr.startswith("Error: give both a dashboard username and a password")


@pytest.mark.parametrize(
    ("host", "credentials", "allowed"),
    [
        ("127.0.0.1", (None, None), True),
        ("127.0.0.2", (None, None), True),
        ("localhost", (None, None), True),
        ("::1", (None, None), True),
        ("[::1]", (None, None), True),
        ("0.0.0.0", (None, None), False),
        ("::", (None, None), False),
        ("192.0.2.10", (None, None), False),
        ("db.example.org", (None, None), False),
        ("localhost.example.org", (None, None), False),
        ("0.0.0.0", AUTH, True),
        ("0.0.0.0", ("ops", None), False),
        ("127.0.0.1", (None, "secret"), False),
        ("0.0.0.0", ("o:ps", "secret"), False),
    ],
)
def test_which_addresses_need_credentials(host, credentials, allowed):
    from jobctl.dashboard import check_access
    from jobctl.errors import UsageError

    if allowed:
        check_access(host, *credentials)
    else:
        with pytest.raises(UsageError):
            check_access(host, *credentials)


@SQLITE
def test_unreachable_redis_is_a_backend_error_with_the_password_masked(run):
    out = run("dashboard", REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert out.returncode == 4
    assert out.stderr.startswith("Error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr


# ---- the app, in this process, on the real Redis ----


@SQLITE
def test_shows_jobctl_jobs_read_as_json_only_with_their_text_escaped(env, run, start_worker, monkeypatch):
    from rq.serializers import DefaultSerializer

    from jobctl.dashboard import create_app

    start_worker()
    lines = [
        {"name": NAME, "task": "sleep", "args": {"seconds": 0.2, "steps": 2}},
        {"name": "fails", "task": "boom", "args": {"message": "<script>alert(1)</script>"}},
    ]
    out = run("submit", "--from", "-", input="".join(json.dumps(line) + "\n" for line in lines))
    assert out.returncode == 0, out.stderr
    done, failed = (int(n) for n in out.stdout.split())
    wait_for(lambda: status(done) == "completed" and status(failed) == "failed", 30)

    def no_pickle(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the dashboard used pickle")

    # rq's default serializer is pickle: nothing on any page may reach it
    monkeypatch.setattr(DefaultSerializer, "loads", no_pickle)
    monkeypatch.setattr(DefaultSerializer, "dumps", no_pickle)
    client = create_app(env["REDIS_URL"]).test_client()
    for page in ("/", "/0/view/queues", "/0/view/workers", "/0/view/jobs", f"/0/view/job/jobctl-{done}-1"):
        assert client.get(page, follow_redirects=True).status_code == 200, page
    assert client.get("/static/js/jquery-3.5.1.min.js").status_code == 200

    queues = client.get("/0/data/queues.json").get_json()["queues"]
    counts = {q["name"]: (q["finished_job_registry_count"], q["failed_job_registry_count"]) for q in queues}
    assert counts["default"] == (1, 1)
    workers = client.get("/0/data/workers.json").get_json()["workers"]
    assert len(workers) == 1 and "default" in workers[0]["queues"]

    job = client.get(f"/0/data/job/jobctl-{done}-1.json").get_json()
    # the job page inserts these as HTML: they arrive escaped, so the browser shows the name as typed
    assert job["description"] == html.escape(NAME)
    meta = json.loads(html.unescape(job["metadata"]))
    assert meta["progress"] == {"current": 2, "total": 2, "message": "slept 2"}
    assert job["status"] == "finished" and job["origin"] == "default"
    failure = client.get(f"/0/data/job/jobctl-{failed}-1.json").get_json()
    assert "<script>" not in failure["exc_info"] and "&lt;script&gt;alert(1)" in failure["exc_info"]

    # the job list escapes descriptions itself: they arrive as they are
    listed = client.get("/0/data/jobs/default/finished/8/asc/1.json").get_json()["jobs"]
    assert [j["description"] for j in listed] == [NAME]

    # deleting behind the SQL record's back is disabled (`jobctl cancel` is the way)
    deleted = client.post(f"/job/jobctl-{done}-1/delete", headers={"Sec-Fetch-Site": "same-origin"})
    assert deleted.get_json() == {"status": "DISABLED"}
    assert client.get(f"/0/data/job/jobctl-{done}-1.json").status_code == 200


@SQLITE
def test_credentials_are_required_when_set(env):
    from jobctl.dashboard import create_app

    client = create_app(env["REDIS_URL"], *AUTH).test_client()
    refused = client.get("/0/view/queues")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith('Basic realm="jobctl dashboard"')
    assert client.get("/0/data/queues.json", headers=basic(AUTH[0], "wrong")).status_code == 401
    assert client.get("/0/data/queues.json", headers=basic("OPS", AUTH[1])).status_code == 401
    assert client.get("/0/data/queues.json", headers=basic(*AUTH)).status_code == 200
    # with credentials, any Host may be used (a proxy, a team's host name)
    assert client.get("/", headers={**basic(*AUTH), "Host": "jobs.example.org"}).status_code == 200


@SQLITE
def test_other_sites_can_neither_read_nor_act_through_the_browser(env):
    from jobctl.dashboard import create_app

    client = create_app(env["REDIS_URL"]).test_client()
    # DNS rebinding: a page's own name re-pointed at 127.0.0.1 arrives with its Host header
    assert client.get("/0/data/queues.json", headers={"Host": "evil.example"}).status_code == 403
    assert client.get("/0/data/queues.json", headers={"Host": "127.0.0.1:9181"}).status_code == 200
    assert client.get("/0/data/queues.json", headers={"Host": "[::1]:9181"}).status_code == 200
    # CSRF: a form or an image on another site
    assert client.post("/job/x/requeue", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/job/x/requeue", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get("/requeue/default", headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
    allowed = client.get("/requeue/default", headers={"Sec-Fetch-Site": "same-origin"})
    assert allowed.status_code == 200 and allowed.get_json() == {"status": "OK", "count": 0}


@SQLITE
def test_an_expired_job_or_an_unreachable_redis_gets_a_plain_answer(env):
    from jobctl.dashboard import create_app

    missing = create_app(env["REDIS_URL"]).test_client().get("/0/view/job/jobctl-999-1")
    assert missing.status_code == 404 and "jobctl show ID" in missing.get_data(as_text=True)
    down = create_app("redis://:hunter2@127.0.0.1:1/0").test_client().get("/0/data/queues.json")
    assert down.status_code == 503
    assert down.get_data(as_text=True).strip() == "Cannot reach Redis at redis://:***@127.0.0.1:1/0."


# ---- the command, and a real browser ----


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium driven by selenium (Debian's chromium and chromium-driver packages)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None  # type: ignore[assignment]
    missing = [
        what
        for what, found in (("chromium", chromium), ("chromedriver", chromedriver), ("selenium", webdriver))
        if not found
    ]
    if missing:
        reason = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to read HTTP statuses
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(chromedriver)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def wait_in_browser(driver: Any, predicate: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)


@SQLITE
def test_in_a_browser_the_dashboard_shows_queue_job_name_and_progress(run, start_worker, background, browser):
    from selenium.webdriver.common.by import By

    start_worker()
    job_id = submit(run, NAME, "-t", "sleep", "-a", "seconds=60", "-a", "steps=120")
    wait_for(lambda: status(job_id) == "processing", 30)
    process, url = start_dashboard(background)
    assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise

    browser.get(url + "0/view/queues")
    wait_in_browser(browser, lambda d: d.find_elements(By.XPATH, "//td[normalize-space()='default']"))

    browser.get(url + "0/view/workers")
    wait_in_browser(browser, lambda d: f"run_job({job_id}, 1)" in page_text(d))

    browser.get(url + "0/view/jobs/default/started/8/asc/1")
    wait_in_browser(browser, lambda d: NAME in page_text(d))

    browser.get(f"{url}0/view/job/jobctl-{job_id}-1")
    progress = re.compile(r'"progress": \{"current": (\d+), "total": 120, "message": "slept \d+"\}')
    found = wait_in_browser(browser, lambda d: progress.search(page_text(d)))
    assert int(found.group(1)) >= 1
    text = page_text(browser)
    assert NAME in text and "started" in text
    assert browser.find_elements(By.CSS_SELECTOR, ".description-scroll b") == []  # not turned into HTML
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-job.png"))

    assert run("cancel", str(job_id)).returncode == 0
    assert process.stop() == 0 and "Dashboard stopped." in process.output()


def document_statuses(driver: Any, url: str) -> list[int]:
    """HTTP statuses the browser received for `url` since the last call (from its performance log)."""
    statuses = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived" and message["params"]["response"]["url"] == url:
            statuses.append(int(message["params"]["response"]["status"]))
    return statuses


@SQLITE
def test_a_protected_dashboard_answers_401_without_credentials(env, background, browser):
    process, url = start_dashboard(
        background,
        "--host",
        "127.0.0.1",
        JOBCTL_DASHBOARD_USERNAME=AUTH[0],
        JOBCTL_DASHBOARD_PASSWORD=AUTH[1],
    )
    assert "Basic auth required" in process.output() and AUTH[1] not in process.output()
    status, body = http_get(url + "0/data/queues.json")
    assert status == 401 and "Login required" in body
    status, body = http_get(url + "0/data/queues.json", basic(*AUTH))
    assert status == 200 and json.loads(body) == {"queues": []}

    document_statuses(browser, url)  # forget what earlier tests loaded
    browser.get(url + "0/view/workers")
    assert document_statuses(browser, url + "0/view/workers") == [401]
    assert "Workers" not in page_text(browser)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": basic(*AUTH)})
    try:
        browser.get(url + "0/view/workers")  # the page and the data it fetches all carry the credentials
        assert document_statuses(browser, url + "0/view/workers") == [200]
        wait_in_browser(browser, lambda d: "No workers." in page_text(d))
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


@SQLITE
def test_the_dashboard_serves_the_embedded_redis_and_leaves_no_server_behind(
    env, run, background, monkeypatch
):
    import redis

    from jobctl.embedded import socket_path

    monkeypatch.delenv("REDIS_URL")
    job_id = submit(run, "queued on the embedded Redis", "-t", "noop")
    process, url = start_dashboard(background)
    assert "Redis unix://" in process.output()
    status, body = http_get(url + "0/data/queues.json")
    assert status == 200
    assert [(q["name"], q["count"]) for q in json.loads(body)["queues"]] == [("default", 1)]
    status, body = http_get(url + f"0/data/job/jobctl-{job_id}-1.json")
    assert status == 200 and json.loads(body)["description"] == "queued on the embedded Redis"

    assert process.stop() == 0
    sock = socket_path(Path(env["JOBCTL_DATA_DIR"]))
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1).ping()
