"""The translation page in a real browser: Debian's headless chromium driven by selenium (chromium-driver).

Type a German sentence, see the English translation appear (streamed from /v1/translate/stream), see the
detected language, switch the source language; a screenshot is saved under pytest's tmp dir (and into
$MTSERVE_ARTIFACTS when it is set, e.g. by CI).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtserve.client import TranslationClient
from mtserve.server.config import ServerConfig


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are missing; CI must run this test (.ci/run installs them)")
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def server(helpers: Any) -> Iterator[Any]:
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0, http_port=0, device="cpu", threads=1,
                          log_level="WARNING")
    with helpers.running_server(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Headless, as root in a container, and without the background traffic this closed network refuses.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,800", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def test_type_a_sentence_and_see_it_translated(server: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    text = "Das Haus ist groß."
    with TranslationClient(server.address) as client:
        expected = client.translate([text])[0].text
    browser.get(f"http://127.0.0.1:{server.server.http_port}/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: len(Select(b.find_element(By.ID, "target")).options) > 0)
    # One source language served: the page picks it; ask it to detect instead.
    assert Select(browser.find_element(By.ID, "source")).first_selected_option.get_attribute("value") == "de"
    Select(browser.find_element(By.ID, "source")).select_by_value("auto")
    browser.find_element(By.ID, "text").send_keys(text)
    wait.until(lambda b: b.find_element(By.ID, "translation").text == expected)
    assert browser.find_element(By.ID, "detected").text.startswith("detected: de")
    # Alternatives from /translate (n-best) appear under it, none equal to the translation.
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#alternatives li"))
    alternatives = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#alternatives li")]
    assert expected not in alternatives and all(alternatives)

    # Switch the source language to German by hand: same translation, no detection line.
    Select(browser.find_element(By.ID, "source")).select_by_value("de")
    wait.until(lambda b: b.find_element(By.ID, "detected").text == "")
    wait.until(lambda b: b.find_element(By.ID, "translation").text == expected)
    assert browser.find_element(By.ID, "status").text == ""
    assert browser.find_element(By.ID, "metrics-link").get_attribute("href").endswith("/metrics")

    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    if os.environ.get("MTSERVE_ARTIFACTS"):
        target = Path(os.environ["MTSERVE_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "translation-page.png")
