"""The report in a real browser: headless Chromium, network off, opened from disk.

Needs the distribution's ``chromium`` and ``chromium-driver`` packages and
``selenium`` (``pip install 'ukb-mimir[browser]'``); ``.ci/run`` installs them.
Skipped, with the reason, where they are missing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report extra (pip install 'ukb-mimir[report]') is needed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is needed (pip install 'ukb-mimir[browser]')")

from headless import CHROMIUM, DRIVER, SKIP_REASON, headless_chromium  # noqa: E402
from test_report import make_batch_folder  # noqa: E402

from mimir.batch.report import build_report  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=SKIP_REASON),
]


@pytest.fixture
def browser():
    with headless_chromium() as driver:
        yield driver


def test_report_renders_offline_and_a_click_shows_the_preview(tmp_path: Path, browser) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    info = make_batch_folder(tmp_path / "out", n=40, images=4)
    result = build_report(tmp_path / "out")
    browser.get(result.path.resolve().as_uri())

    # rendered: the summary is visible and shows the numbers of the outputs
    summary = browser.find_element(By.ID, "summary")
    assert summary.is_displayed()
    assert browser.find_element(By.ID, "count-predicted").text == str(len(info["results"]))
    assert browser.find_element(By.ID, "count-flagged").text == str(len(info["flagged"]))
    # every image decoded (embedded data, nothing fetched)
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0
    shot = browser.get_screenshot_as_png()
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("MIMIR_SCREENSHOT"):  # for the README picture
        Path(os.environ["MIMIR_SCREENSHOT"]).write_bytes(shot)
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert pixels.shape[1] >= 1000 and pixels.std() > 20  # not blank
    assert len(np.unique(pixels)) > 50

    # a click on a flagged subject shows its panel with its preview
    panel_id = "subject-f0"
    panel = browser.find_element(By.ID, panel_id)
    assert not panel.is_displayed()
    link = browser.find_element(By.CSS_SELECTOR, f"#flagged a.subject-link[href='#{panel_id}']")
    name = link.text
    link.click()
    assert panel.is_displayed()
    assert name in panel.text and "fat_water_swap:station=3" in panel.text
    preview = panel.find_element(By.CSS_SELECTOR, "img.preview")
    assert preview.is_displayed() and preview.size["width"] > 300
    assert browser.execute_script("return arguments[0].naturalWidth", preview) > 300

    # and no console errors on the way
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
