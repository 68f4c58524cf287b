"""The operators' pages in a real headless browser (Debian's chromium through chromium-driver; no browser
download): label with the keyboard and the mouse, see it in the database at once. Screenshots of each
page go to test-artifacts/ (or $INSPECTD_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inspectd.core.registry import bundled_model_dir, read_meta
from tests.conftest import DaemonProcess, Workspace, png_bytes, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not Path(DRIVER).exists() and os.environ.get("INSPECTD_REQUIRE_BROWSER"):
    raise RuntimeError(
        "INSPECTD_REQUIRE_BROWSER is set but chromium-driver is not installed (make system-deps)"
    )
pytestmark = [
    pytest.mark.skipif(not Path(DRIVER).exists(), reason="chromium-driver is not installed"),
    pytest.mark.slow,
]
ARTIFACTS = Path(
    os.environ.get("INSPECTD_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")
)
Start = Callable[..., DaemonProcess]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def row(ws: Workspace, result_id: int) -> dict[str, Any]:
    return next(r for r in ws.rows() if r["id"] == result_id)


def press(driver: Any, key: str) -> None:
    """A key on the page itself (not into a field: the keys are the page's only when no field has focus)."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("document.activeElement && document.activeElement.blur()")
    ActionChains(driver).send_keys(key).perform()


def labeled(driver: Any, marker: str) -> Callable[[], bool]:
    return lambda: driver.find_element("tag name", "body").get_attribute("data-labeled") == marker


def shown(driver: Any) -> int:
    """The id of the item on the page, once the page (after a navigation: the new one) shows it."""

    def text() -> str:
        found = driver.find_elements("id", "result-id")  # none yet while the previous page is still up
        return str(found[0].text.strip()) if found else ""

    wait_until(text, 20, "an item on the page")
    wait_until(
        lambda: driver.execute_script("return document.getElementById('image').naturalWidth > 0"),
        20,
        "its image",
    )
    return int(driver.find_element("id", "result-id").text)


def test_label_the_queue_with_the_keyboard(daemon: Start, upgraded: Workspace, browser: Any) -> None:
    proc = daemon()
    for i in range(6):
        upgraded.drop(f"r{i}.png", png_bytes(8000 + i, present=bool(i % 2)))
    proc.wait_rows(6)
    browser.get(proc.url("/review"))
    browser.find_element("id", "who").send_keys("dana")
    first = shown(browser)
    shot(browser, "review")
    press(browser, "p")
    wait_until(labeled(browser, str(first)), 10, "the first label saved")
    assert row(upgraded, first)["label"] == "present" and row(upgraded, first)["labeled_by"] == "dana"

    second = shown(browser)
    assert second != first
    press(browser, "a")
    wait_until(labeled(browser, str(second)), 10, "the second label saved")
    assert row(upgraded, second)["label"] == "absent"
    press(browser, "u")
    wait_until(labeled(browser, f"undo-{second}"), 10, "the undo saved")
    assert row(upgraded, second)["label"] is None and shown(browser) == second

    press(browser, "s")  # skipped: nothing written
    third = shown(browser)
    assert third != second and row(upgraded, second)["label"] is None

    from selenium.webdriver.common.action_chains import ActionChains

    image = browser.find_element("id", "image")
    ActionChains(browser).move_to_element_with_offset(image, -40, -30).click_and_hold().move_by_offset(
        60, 50
    ).release().perform()
    assert browser.find_element("id", "drawn-box").is_displayed()
    press(browser, "p")
    wait_until(labeled(browser, str(third)), 10, "the boxed label saved")
    saved = row(upgraded, third)
    assert saved["label"] == "present" and saved["label_box"] is not None
    x, y, w, h = (int(v) for v in saved["label_box"].split(","))
    assert w > 10 and h > 10 and 0 <= x < saved["width"] and 0 <= y < saved["height"]

    press(browser, "h")  # the heatmap over the image
    wait_until(
        lambda: browser.execute_script("return document.getElementById('heat').naturalWidth > 0"),
        20,
        "the heatmap",
    )
    shot(browser, "review-heatmap")

    browser.get(proc.url("/results"))
    thumbs = browser.find_elements("css selector", "img.thumb")
    assert len(browser.find_elements("css selector", "#results tbody tr")) == 6 and thumbs
    wait_until(
        lambda: all(browser.execute_script("return arguments[0].naturalWidth > 0", t) for t in thumbs),
        20,
        "thumbnails",
    )
    assert "dana" in browser.find_element("id", "results").text
    shot(browser, "results")

    browser.get(proc.url("/models"))
    assert read_meta(bundled_model_dir()).version in browser.find_element("tag name", "main").text
    shot(browser, "models")
    assert proc.stop() == 0


def test_with_tokens_the_page_asks_to_sign_in_and_signs_labels(
    daemon: Start, upgraded: Workspace, browser: Any
) -> None:
    tokens = upgraded.root / "tokens"
    tokens.write_text("# who may label\nkim kim-s3cret\nlee lee-s3cret\n")
    upgraded.write_config(http={"listen": f"127.0.0.1:{upgraded.port}", "token_file": str(tokens)})
    proc = daemon()
    upgraded.drop("t.png", png_bytes(8100))
    proc.wait_rows(1)
    browser.get(proc.url("/review"))
    wait_until(lambda: "/login" in browser.current_url, 10, "the sign-in page")
    browser.find_element("id", "token").send_keys("wrong")
    browser.find_element("id", "sign-in").click()
    wait_until(lambda: browser.find_elements("id", "login-failed"), 10, "the refusal")
    shot(browser, "login-failed")
    browser.find_element("id", "token").send_keys("lee-s3cret")
    browser.find_element("id", "sign-in").click()
    first = shown(browser)
    press(browser, "a")
    wait_until(labeled(browser, str(first)), 10, "the label saved")
    assert row(upgraded, first)["labeled_by"] == "lee"
    assert proc.stop() == 0


def test_twenty_labels_by_keyboard_then_a_retrain_on_them(
    daemon: Start, upgraded: Workspace, browser: Any
) -> None:
    """The whole loop: 20 results labeled through the page, exactly those 20 in the database, and
    ``inspectd retrain`` trains on them."""
    import json

    upgraded.write_config(
        retrain={
            "backbone": "small_cnn",
            "head": "global",
            "epochs": 1,
            "input_size": 32,
            "min_per_class": 2,
            "quantize": "none",
            "batch_size": 8,
            "seed": 2,  # a split of these 20 images with both classes on every side
            "validation_fraction": 0.3,
            "holdout_fraction": 0.3,
            "augment": {"source_copies": 0},
        }
    )
    proc = daemon()
    truth = {}
    for i in range(20):
        present = i % 2 == 1
        upgraded.drop(f"k{i:02d}.png", png_bytes(8200 + i, present=present))
        truth[f"k{i:02d}.png"] = "present" if present else "absent"
    rows = proc.wait_rows(20)
    names = {r["id"]: r["original_name"] for r in rows}
    browser.get(proc.url("/review?limit=24"))
    given: dict[int, str] = {}
    for _ in range(20):
        result_id = shown(browser)
        while result_id in given:  # the page moved on when the label was saved
            result_id = shown(browser)
        value = truth[names[result_id]]
        press(browser, "p" if value == "present" else "a")
        wait_until(labeled(browser, str(result_id)), 10, f"label {len(given) + 1} saved")
        given[result_id] = value
    stored = {r["id"]: r["label"] for r in upgraded.rows() if r["label"] is not None}
    assert stored == given and len(stored) == 20
    assert proc.stop() == 0
    result = upgraded.cli("retrain", "--force", check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (p for p in (upgraded.root / "var" / "runs").glob("retrain-*") if p.is_dir())
    summary = json.loads((run / "summary.json").read_text())
    split = summary["training"]["split"]
    assert sum(c for part in split.values() for c in part.values()) == 20
    # the models page shows the new version's report: its plots, and its worst errors (results: thumbnails)
    proc = daemon()
    browser.get(proc.url("/models"))
    article = browser.find_element("id", f"version-{summary['version']}")
    plots = article.find_elements("css selector", ".plots img")
    assert len(plots) == 4
    wait_until(
        lambda: all(browser.execute_script("return arguments[0].naturalWidth > 0", p) for p in plots),
        20,
        "plots",
    )
    report = json.loads((run / "holdout-candidate" / "report.json").read_text())
    thumbs = article.find_elements("css selector", ".worst img")
    assert len(thumbs) == len(report["worst_false_positives"][:5])  # every one of them is a result here
    shot(browser, "models-after-retrain")
    assert proc.stop() == 0
