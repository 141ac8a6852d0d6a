"""Double reading in the workstation (headless Chromium through the local entry point): the second reader does not see
the first read; when they disagree, an adjudicator sees both reads and the AI side by side and decides; exactly one
ImageVerified results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.workstation.conftest import DESKTOP, Platform, sign_in, start_platform, wait_reading

pytestmark = pytest.mark.e2e  # a real browser (tests/conftest.py would say integration: it uses moto)


@pytest.fixture(scope="module")
def plat(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(aws_endpoint, tmp_path_factory.mktemp("ws-double"), read_mode="double")


def read_case(browser: Any, plat: Platform, who: str, sop: str, label: str) -> str:
    """Sign in as ``who``, open ``sop`` from the worklist, read it; returns the reads panel's text at opening."""
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        sign_in(page, plat, who)
        page.wait_for_selector(f"button[data-open='{sop}']")
        page.click(f"button[data-open='{sop}']")
        wait_reading(page, sop)
        seen = page.inner_text("#reading-panel")
        assert page.inner_text("#form-title") == "Your read (double reading, blinded)"
        assert page.is_hidden("#reads-panel"), "the first read must not be shown to the second reader"
        page.check(f"input[name=label][value={label}]")
        page.click("#submit-read")
        page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
        assert "response" in page.evaluate("window.radloopWorkstation.submitted[0]")
        return seen
    finally:
        ctx.close()


def test_two_readers_disagree_and_the_adjudicator_decides(plat: Platform, browser: Any) -> None:
    (case,) = plat.add_cases([0.82])
    read_case(browser, plat, "rad-1", case.sop, "pneumonia")
    seen = read_case(browser, plat, "rad-2", case.sop, "normal")
    assert "rad-1" not in seen and "Pneumonia\n" not in seen.split("Finding")[0]
    assert plat.case_view(case.sop)["workflow_status"] == "adjudication"
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        sign_in(page, plat, "rad-3")
        page.select_option("#f-status", "adjudication")
        page.wait_for_selector(f"#worklist-table tr[data-case='{case.sop}']")
        assert "Adjudication" in page.inner_text(f"#worklist-table tr[data-case='{case.sop}']")
        page.click(f"button[data-open='{case.sop}']")
        wait_reading(page, case.sop)
        assert page.inner_text("#form-title") == "Adjudication: your decision"
        cards = page.eval_on_selector_all("#reads .read-card", "cs => cs.map(c => c.innerText)")
        assert len(cards) == 3
        assert "rad-1" in cards[0] and "pneumonia" in cards[0]
        assert "rad-2" in cards[1] and "normal" in cards[1]
        assert "AI" in cards[2] and "82.0%" in cards[2]
        page.screenshot(path="var/workstation-screenshots/adjudication-desktop.png")
        page.check("input[name=label][value=pneumonia]")
        page.click("#submit-read")
        page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
        res = page.evaluate("window.radloopWorkstation.submitted[0].response")
        assert res["status"] == "final" and res["final_label"] == "pneumonia"
    finally:
        ctx.close()
    final = plat.case_view(case.sop)["final_label"]
    assert (final["label"], final["resolution"], final["version"]) == ("pneumonia", "adjudicated", 1)
    verified = [e["detail"] for e in plat.events(wait_s=3) if e["detail-type"] == "ImageVerified"]
    assert [(e["sop_uid"], e["resolution"]) for e in verified] == [(case.sop, "adjudicated")]
