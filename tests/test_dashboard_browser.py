"""The dashboard in a real browser: headless Chromium driven by Playwright, against real workers.

Each test asserts what a person sees on the page. Needs Playwright's Python
package and a Chromium: Debian's ``chromium`` (``apt-get install chromium``)
or any Chrome named by ``$RUSH_CHROMIUM``; Playwright's own browser download
is not used. Without one, the tests are skipped and say how to get one.

How fast the page reflects a change (a task finished, a worker lost) is
measured and printed (``pytest -s``), with only a generous bound asserted.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import dask
import funcs
import pytest
from test_cli import TIMEOUT

from rush_dask import Rush

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

pytest.importorskip("aiohttp", reason="the dashboard extra: pip install 'rush-dask[dashboard]'")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra has it)")

REACTION_BOUND = 5.0  # seconds: generous; the target is 1 s (see the printed figures)


def chromium_path() -> str | None:
    for candidate in (os.environ.get("RUSH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium found: apt-get install chromium (Debian, Ubuntu), or set RUSH_CHROMIUM "
            "to a Chrome or Chromium binary"
        )
    with playwright.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        chrome = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield chrome
        chrome.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 1400})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"errors in the page's script: {errors}"


def count(page, name: str) -> int:
    return int(page.inner_text(f"#count-{name}"))


def wait_for_count(page, name: str, value: int, timeout: float = TIMEOUT) -> None:
    page.wait_for_function(f"document.getElementById('count-{name}').textContent === '{value}'", timeout=timeout * 1000)


def report(what: str, seconds: float) -> None:
    print(f"\ndashboard reaction, {what}: {seconds * 1000:.0f} ms")
    assert seconds < REACTION_BOUND, f"the page took {seconds:.2f} s to show {what}"


def test_page_shows_workers_counts_while_tasks_run_and_a_lost_worker(rush, page):
    ids = rush.start_workers(funcs.sleep_then, n_workers=2, heartbeat_period=0.5)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    page.goto(rush.dashboard(port=0))
    for wid in ids:  # every worker id is on the page, running
        page.wait_for_selector(f"#workers tr[data-worker='{wid}'][data-state='running']")
    assert page.inner_text("#control-note") == "read-only"
    assert page.locator("#workers button").count() == 0

    keys = rush.push_tasks([{"x": i, "duration": 0.25} for i in range(16)])
    page.wait_for_function("+document.getElementById('count-running').textContent > 0", timeout=TIMEOUT * 1000)
    seen = {count(page, "finished")}
    while count(page, "finished") < 16:  # the count climbs while tasks run, without reloads
        seen.add(count(page, "finished"))
        time.sleep(0.05)
    assert len(seen) >= 3, f"finished counts seen: {sorted(seen)}"
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert count(page, "queued") == 0 and count(page, "failed") == 0
    done = "[...document.querySelectorAll('#workers td.done')].reduce((n, td) => n + +td.textContent, 0)"
    page.wait_for_function(f"{done} === 16", timeout=TIMEOUT * 1000)  # per worker, with each heartbeat
    assert all(cell.endswith("MiB") for cell in page.locator("#workers td.memory").all_inner_texts())

    # A task finishing: from its finished_at (Redis time) to the page showing it.
    [key] = rush.push_tasks([{"x": 99, "duration": 0.0}])
    rush.wait_for_tasks([key], timeout=TIMEOUT)
    finished_at = float(rush.client.hget(rush.keys.task(key), "finished_at"))
    wait_for_count(page, "finished", 17)
    report("a task finished", time.time() - finished_at)

    # A worker lost: SIGKILL, then the page marks it lost (its process is gone on this host).
    victim = ids[0]
    pid = int(rush.client.hget(rush.keys.worker(victim), "pid"))
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    page.wait_for_selector(f"#workers tr[data-worker='{victim}'][data-state='lost']", timeout=TIMEOUT * 1000)
    report("a worker lost (SIGKILL)", time.time() - killed_at)
    assert page.inner_text(f"#workers tr[data-worker='{victim}'] .state") == "lost"
    assert page.locator(f"#workers tr[data-worker='{ids[1]}'][data-state='running']").count() == 1
    assert count(page, "lost") == 1 and count(page, "workers") == 1


def test_page_shows_a_compute_reaching_100_percent_and_failed_tasks(rush, page):
    rush.start_workers(n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    page.goto(rush.dashboard(port=0))
    page.wait_for_selector("#workers tr[data-state='running']")

    slow = dask.delayed(funcs.sleep_then)
    total = dask.delayed(lambda parts: sum(p["y"] for p in parts))([slow(i, duration=0.3) for i in range(12)])
    result: list = []
    runner = threading.Thread(target=lambda: result.append(dask.compute(total, scheduler=rush)[0]))
    runner.start()
    try:
        bar = page.locator("#computes .compute")
        bar.first.wait_for(timeout=TIMEOUT * 1000)
        pcts = {int(bar.first.get_attribute("data-pct"))}
        while not result and runner.is_alive():
            pcts.add(int(bar.first.get_attribute("data-pct")))
            time.sleep(0.05)
    finally:
        runner.join(TIMEOUT)
    assert result == [sum(range(12))]
    page.wait_for_selector("#computes .compute[data-pct='100']", timeout=TIMEOUT * 1000)
    assert "100 %" in page.inner_text("#computes .compute")
    assert min(pcts) < 100, f"the bar only ever showed {sorted(pcts)}"

    [key] = rush.push_tasks([{"x": -3}], fun=funcs.fail_if_negative)
    rush.wait_for_tasks([key], timeout=TIMEOUT)
    failure = page.locator(f"#failed details[data-key='{key}']")
    failure.wait_for(timeout=TIMEOUT * 1000)
    assert "ValueError: negative input -3" in failure.inner_text()
    failure.locator("summary").click()  # the traceback unfolds, and stays open across updates
    page.wait_for_timeout(1500)
    assert "fail_if_negative" in failure.locator("pre").inner_text()


def test_another_network_is_chosen_from_the_list(rush, redis_url, page):
    rush.push_tasks([{"x": 1}])
    other = Rush(f"{rush.network_id}-other", url=redis_url)
    try:
        other.push_tasks([{"x": i} for i in range(3)])
        page.goto(rush.dashboard(port=0))
        wait_for_count(page, "queued", 1)
        assert other.network_id in page.locator("#network option").all_inner_texts()
        page.select_option("#network", other.network_id)
        page.wait_for_selector(f"body[data-network='{other.network_id}']", timeout=TIMEOUT * 1000)
        wait_for_count(page, "queued", 3)
        assert page.url.endswith(f"?network={other.network_id}")
        page.goto(page.url.replace(other.network_id, "nobody-here"))
        page.wait_for_selector("#updated:has-text(\"unknown network 'nobody-here'\")", timeout=TIMEOUT * 1000)
    finally:
        other.reset()
        other.close()


def test_log_filter_and_stop_button_with_confirmation(rush, redis_url, page, browser):
    first, second = rush.start_workers(funcs.log_something, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    rush.wait_for_tasks(
        rush.push_priority_tasks([{"x": 1}], [first]) + rush.push_priority_tasks([{"x": 2}], [second]), timeout=TIMEOUT
    )
    page.goto(rush.dashboard(port=0, allow_control=True))
    page.wait_for_selector("#log div:has-text('hello from task 2')", timeout=TIMEOUT * 1000)
    page.select_option("#log-worker", first)
    log = page.inner_text("#log")
    assert "hello from task 1" in log and "hello from task 2" not in log
    page.select_option("#log-level", "ERROR")
    assert "hello from task 1" not in page.inner_text("#log")  # WARNING lines are filtered out

    row = f"#workers tr[data-worker='{first}']"
    page.once("dialog", lambda dialog: dialog.dismiss())  # "cancel": nothing happens
    page.click(f"{row} button[data-action='terminate']")
    time.sleep(1.0)
    assert rush.running_worker_ids == sorted([first, second])
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{row} button[data-action='terminate']")
    page.wait_for_selector(f"{row}[data-state='terminated']", timeout=TIMEOUT * 1000)
    assert rush.terminated_worker_ids == [first] and rush.running_worker_ids == [second]
