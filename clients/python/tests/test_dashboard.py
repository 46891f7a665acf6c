"""The checkpoint dashboard (`/ui`) in a real browser (Debian's Chromium,
driven by selenium), against a service holding a committed, an aborted and
a pending checkpoint: what a person sees after entering the admin token.

`UPDATE_SCREENSHOT=1` writes the README's screenshot (docs/dashboard.png)."""

from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import WebDriverWait

import sinkgate
from conftest import ADMIN_TOKEN, REPO


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium is not installed: run scripts/chromium.sh (scripts/test.sh does)")
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def history(service: str, db) -> None:
    """Job `orders`: checkpoint 1 committed, 2 aborted by an operator, 3 pending on t1."""
    db.execute("CREATE TABLE orders (id bigint NOT NULL, item text NOT NULL)")
    admin = sinkgate.Client(service, "orders", ADMIN_TOKEN)
    admin.put_job({"tasks": ["t0", "t1"], "sink": {"table": "orders", "mode": "append"}})
    processor = sinkgate.Processor.start(admin, ["t0", "t1"])
    processor.write("t0", "0-0", [{"id": 1, "item": "tea"}, {"id": 2, "item": "jam"}])
    processor.checkpoint(lambda task: ({"0": 2} if task == "t0" else {"1": 0}, None))
    second = admin.trigger(processor.epoch).checkpoint_id
    admin.abort_checkpoint(second, "paused for maintenance")
    third = admin.trigger(processor.epoch).checkpoint_id
    admin.ack(third, "t0", processor.epoch, {"0": 2})


def text_of(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def test_the_dashboard_shows_a_jobs_checkpoint_history(secured_service, db, browser):
    history(secured_service, db)
    browser.get(f"{secured_service}/ui")
    wait = WebDriverWait(browser, 10)
    # Without a token the API refuses, and the page says what to do.
    wait.until(seen.visibility_of_element_located((By.ID, "message")))
    assert "token" in text_of(browser, "#message")

    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#access button").click()
    row = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, '#jobs tr[data-job="orders"]')))
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "orders"
    assert cells[2] == "1"  # last committed checkpoint
    assert cells[3].endswith("ago")
    assert cells[4] == "3"  # pending
    assert cells[5] == "ok"

    row.click()
    wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, '#checkpoints tr[data-checkpoint="1"]')))
    statuses = {
        checkpoint: text_of(browser, f'#checkpoints tr[data-checkpoint="{checkpoint}"] .status')
        for checkpoint in (1, 2, 3)
    }
    assert statuses == {1: "committed", 2: "aborted", 3: "pending"}
    committed = text_of(browser, '#checkpoints tr[data-checkpoint="1"]')
    assert "2/2" in committed and "ms" in committed
    assert "paused for maintenance" in text_of(browser, '#checkpoints tr[data-checkpoint="2"]')
    pending = text_of(browser, "#pending")
    assert "checkpoint 3" in pending and "1 of 2 tasks acked" in pending
    assert "t1: not acked" in text_of(browser, '#pending li[data-task="t1"]')
    assert "t0: acked" in text_of(browser, '#pending li[data-task="t0"]')
    assert "checkpoint 1" in text_of(browser, "#recovery")
    assert "0: 2" in text_of(browser, "#recovery")

    if os.environ.get("UPDATE_SCREENSHOT"):
        browser.save_screenshot(str(REPO / "docs" / "dashboard.png"))
