"""evaluation.html in a real browser: headless Chromium, network off, opened from disk.

Needs the distribution's ``chromium`` and ``chromium-driver`` and ``selenium``
(the browser extra); skipped, with the reason, where they are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the report extra (pip install 'ukb-mimir[report]') is needed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is needed (pip install 'ukb-mimir[browser]')")

from headless import CHROMIUM, DRIVER, SKIP_REASON, headless_chromium  # noqa: E402
from test_evaluate import make_study, rap_table  # noqa: E402

from mimir.analysis.evaluate import evaluate  # noqa: E402
from mimir.outputs.writers import csv_text  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=SKIP_REASON),
]


def test_evaluation_page_renders_offline_with_its_figures_and_says_it_is_safe(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    results, ref, _ = make_study()
    (tmp_path / "p.csv").write_text(csv_text(results))
    rap_table(ref).to_csv(tmp_path / "r.csv", index=False)
    res = evaluate(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "ev")
    with headless_chromium() as driver:
        driver.get((res.out_dir / "evaluation.html").resolve().as_uri())
        banner = driver.find_element(By.ID, "safe-to-export")
        assert banner.is_displayed() and banner.text.startswith("Safe to export.")
        assert banner.location["y"] < driver.find_element(By.ID, "summary").location["y"]  # at the top
        rows = driver.find_elements(By.CSS_SELECTOR, "#summary table tr")
        assert len(rows) == 1 + 3  # header + three targets
        assert "mod_a" in rows[1].text and "weight" in rows[1].text
        images = driver.find_elements(By.CSS_SELECTOR, "img.fig")
        assert len(images) == 3
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        assert broken == 0
        assert driver.execute_script("return arguments[0].naturalWidth", images[0]) > 800
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe
