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


def test_the_worklist_does_not_name_who_holds_a_case_in_double_reading(plat: Platform, browser: Any) -> None:
    """Blinded double reading: another reader's claim (perhaps the first read's reader) is not named; one's own is."""
    theirs, mine = plat.add_cases([0.97, 0.96])
    assert plat.api("POST", f"/verification/cases/{theirs.sop}/claim", subject="dr-first").status_code == 200
    assert plat.api("POST", f"/verification/cases/{mine.sop}/claim", subject="dr-second").status_code == 200
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        sign_in(page, plat, "dr-second")
        page.wait_for_selector(f"#worklist-table tr[data-case='{theirs.sop}']")
        assert page.inner_text(f"#worklist-table tr[data-case='{theirs.sop}'] td.claim") == "Claimed by another reader"
        assert page.inner_text(f"#worklist-table tr[data-case='{mine.sop}'] td.claim") == "Claimed by you"
        assert "dr-first" not in page.inner_text("#view-worklist")
    finally:
        ctx.close()
        plat.api("DELETE", f"/verification/cases/{mine.sop}/claim", subject="dr-second")


def test_a_case_the_reader_already_read_is_never_their_next_case(plat: Platform, browser: Any) -> None:
    """Found by a review (session 22): after a first read made elsewhere (another tab, the phone), the workstation
    offered the same reader that half-read case as their next one, and claimed it (blocking the second reader); its
    row read "Unread". The worklist's read_by_me now decides both."""
    done, other = plat.add_cases([0.999_970, 0.999_960])  # the two highest in the queue: done would come next
    r = plat.api("POST", f"/verification/cases/{done.sop}/reads", subject="dr-twice", json={"label": "normal"})
    assert r.status_code == 200 and r.json()["status"] == "open"
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        sign_in(page, plat, "dr-twice")
        page.wait_for_selector(f"#worklist-table tr[data-case='{done.sop}']")
        assert page.inner_text(f"#worklist-table tr[data-case='{done.sop}'] td.claim").startswith("Read by you")
        page.click(f"button[data-open='{other.sop}']")
        wait_reading(page, other.sop)
        page.check("input[name=label][value=pneumonia]")
        page.click("#submit-read")
        page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
        page.wait_for_function("(s) => window.radloopWorkstation.caseId !== s", arg=other.sop, timeout=20_000)
        assert page.evaluate("window.radloopWorkstation.caseId") != done.sop
        assert plat.case_view(done.sop).get("lease_owner") in (None, "another reader")
    finally:
        ctx.close()


def test_the_priority_filter_asks_the_server_and_ignores_stale_answers(plat: Platform, browser: Any) -> None:
    """Found by a review (session 22): the priority filter was applied to one page in the browser ("No cases match."
    while routine cases waited on later pages), and an older answer for another filter could overwrite the newer."""
    (routine,) = plat.add_cases([0.02])
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/verification/worklist" in r.url else None)
        sign_in(page, plat, "dr-filter")
        page.wait_for_selector("#worklist-table tbody tr")
        # The unread list's answer comes late; the routine one, asked for after it, must win.
        page.evaluate("""() => { const f = window.fetch; window.fetch = (u, o) =>
            String(u).includes('status=unread') && !String(u).includes('priority=')
              ? new Promise((r) => setTimeout(() => r(f(u, o)), 2500)) : f(u, o); }""")
        page.select_option("#f-status", "unread")
        page.wait_for_timeout(200)
        page.select_option("#f-priority", "routine")
        page.wait_for_selector(f"#worklist-table tr[data-case='{routine.sop}']")
        assert any("priority=routine" in u for u in asked)
        page.wait_for_timeout(3500)  # the late answer has arrived by now
        rows = page.eval_on_selector_all("#worklist-table tbody tr .badge", "bs => bs.map(b => b.textContent)")
        assert rows and set(rows) == {"Routine"}
        assert page.is_visible(f"#worklist-table tr[data-case='{routine.sop}']")
    finally:
        ctx.close()
