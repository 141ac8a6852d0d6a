"""A review's findings on the reading workstation (session 22), in headless Chromium through the local entry point: a
read whose save fails (503, a dropped connection, 409) comes back filled in and is never reported as saved; Esc in a
form field and plain Enter on a finding neither release nor submit; the keyboard moves the confidence and opacity
sliders; a tap on the phone's series slider does not toggle the overlay; a failed lease renewal is retried and
blames another reader only on a 409. Failures are injected with Playwright request routing (``page.route``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.workstation.conftest import DESKTOP, LEASE_S, PHONE, Platform, sign_in, start_platform, wait_reading

pytestmark = pytest.mark.e2e  # a real browser (tests/conftest.py would say integration: it uses moto)

READS = "**/verification/cases/*/reads"


@pytest.fixture(scope="module")
def plat(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(aws_endpoint, tmp_path_factory.mktemp("ws-safety"), read_mode="single")


@pytest.fixture()
def desktop(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(**DESKTOP)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def open_case(page: Any, plat: Platform, who: str, sop: str) -> None:
    sign_in(page, plat, who)
    page.wait_for_selector(f"button[data-open='{sop}']")
    page.click(f"button[data-open='{sop}']")
    wait_reading(page, sop)


def form(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("""() => ({ label: document.querySelector('input[name=label]:checked')?.value ?? null,
        confidence: document.getElementById('confidence').value, comment: document.getElementById('comment').value,
        enabled: !document.getElementById('submit-read').disabled })"""))


def fill_read(page: Any) -> None:
    page.check("input[name=label][value=pneumonia]")
    page.fill("#confidence", "95")
    page.dispatch_event("#confidence", "input")
    page.fill("#comment", "large RLL consolidation, call the ward")


def wait_back_on(page: Any, sop: str) -> None:
    """The failed case is open again, claimed, with its form usable."""
    page.wait_for_function("""(s) => { const w = window.radloopWorkstation;
        return w.caseId === s && w.claim && !document.getElementById('submit-read').disabled; }""", arg=sop,
                           timeout=20_000)


def held_by(plat: Platform, who: str) -> list[str]:
    return [i["case_id"] for i in plat.worklist() if i.get("lease_owner") == who]


def read_keys(page: Any) -> list[str]:
    keys: list[str] = []
    page.on("request", lambda r: keys.append(r.headers.get("idempotency-key", "")) if (
        r.method == "POST" and r.url.endswith("/reads")) else None)
    return keys


@pytest.mark.parametrize("failure", ["503", "network"])
def test_a_failed_read_comes_back_filled_in_and_is_retried_with_the_same_key(
        plat: Platform, desktop: Any, failure: str) -> None:
    page, who = desktop, f"dr-fail-{failure}"
    first, _ = plat.add_cases([0.999_990 if failure == "503" else 0.999_980, 0.5])
    keys = read_keys(page)
    open_case(page, plat, who, first.sop)
    page.wait_for_function("window.radloopWorkstation.prefetchedId !== null", timeout=20_000)

    def fail(route: Any) -> None:
        if failure == "503":
            route.fulfill(status=503, content_type="application/json", body='{"detail": "Service Unavailable"}')
        else:
            route.abort("internetdisconnected")

    page.route(READS, fail)
    fill_read(page)
    page.click("#submit-read")
    page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
    # back on the failed case, the form as the reader left it, usable; the error is assertive and says what happened
    wait_back_on(page, first.sop)
    assert form(page) == {"label": "pneumonia", "confidence": "95", "comment": "large RLL consolidation, call the ward",
                          "enabled": True}
    assert page.get_attribute("#read-error", "role") == "alert" and page.is_visible("#read-error")
    text = page.inner_text("#read-error")
    assert "NOT saved" in text and ("503" in text if failure == "503" else "network" in text), text
    assert page.evaluate("location.hash") == f"#/case/{first.sop}"
    # the case stays ours beyond a lease (renewed), and the case opened meanwhile was released
    page.wait_for_timeout(int((LEASE_S + 1) * 1000))
    assert held_by(plat, who) == [first.sop]
    assert page.is_visible("#read-error"), "the error stays until the read is saved or dismissed"
    # the retry of the same read: same Idempotency-Key, saved once, the error gone
    page.unroute(READS)
    page.click("#submit-read")
    page.wait_for_function("window.radloopWorkstation.submitted.length === 2")
    assert "response" in page.evaluate("window.radloopWorkstation.submitted[1]")
    page.wait_for_selector("#read-error", state="hidden")
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
    reads = [h for h in plat.case_view(first.sop)["history"] if h["type"] == "read"]
    assert [(r["label"], r.get("confidence"), r.get("comment")) for r in reads] == [
        ("pneumonia", 0.95, "large RLL consolidation, call the ward")]


@pytest.mark.parametrize("status", [503, 409])
def test_the_last_case_of_the_queue_failing_is_not_reported_as_done(plat: Platform, desktop: Any, status: int) -> None:
    page, who = desktop, f"dr-last-{status}"
    (case,) = plat.add_cases([0.999_970 if status == 503 else 0.999_960])
    # the queue has nothing after this case
    page.route("**/verification/worklist?limit=20*", lambda r: r.fulfill(
        status=200, content_type="application/json", body=json.dumps({"items": [], "next_cursor": None})))
    detail = "Service Unavailable" if status == 503 else f"case {case.sop} is claimed by another reader"
    page.route(READS, lambda r: r.fulfill(status=status, content_type="application/json",
                                          body=json.dumps({"detail": detail})))
    open_case(page, plat, who, case.sop)
    page.evaluate("""() => { window.__toasts = []; new MutationObserver(() => window.__toasts.push(
        document.getElementById('status').textContent)).observe(document.getElementById('status'),
        {childList: true, characterData: true, subtree: true}); }""")
    fill_read(page)
    page.click("#submit-read")
    page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
    wait_back_on(page, case.sop)
    text = page.inner_text("#read-error")
    assert "NOT saved" in text and str(status) in text and detail in text, text
    # longer than a status message shows and than a lease lasts: still the case, the read, the alert, the claim
    page.wait_for_timeout(int((LEASE_S + 1) * 1000))
    assert page.evaluate("window.radloopWorkstation.state") == "reading"
    assert page.is_visible("#read-error") and "NOT saved" in page.inner_text("#read-error")
    assert form(page)["comment"] == "large RLL consolidation, call the ward"
    toasts = page.evaluate("window.__toasts")
    assert not any("No more cases" in t or "saved:" in t.lower() for t in toasts), toasts
    assert plat.case_view(case.sop)["lease_owner"] == who
    assert not [h for h in plat.case_view(case.sop)["history"] if h["type"] == "read"]
    page.click("#read-error-dismiss")
    page.wait_for_selector("#read-error", state="hidden")
    page.click("#release-case")
    page.wait_for_function("window.radloopWorkstation.state === 'worklist'")


def test_escape_in_the_comment_keeps_the_case_and_the_draft(plat: Platform, desktop: Any) -> None:
    page, who = desktop, "dr-esc"
    (case,) = plat.add_cases([0.999_950])
    open_case(page, plat, who, case.sop)
    page.click("input[name=label][value=pneumonia]")
    page.click("#comment")
    page.keyboard.type("subtle left base opacity")
    page.keyboard.press("Escape")
    page.wait_for_timeout(1000)
    assert page.evaluate("window.radloopWorkstation.state") == "reading"
    assert page.evaluate("location.hash") == f"#/case/{case.sop}"
    assert form(page)["comment"] == "subtle left base opacity" and form(page)["label"] == "pneumonia"
    assert plat.case_view(case.sop)["lease_owner"] == who
    # Esc outside a form field still releases the case, as documented
    page.focus("#viewport")
    page.keyboard.press("Escape")
    page.wait_for_function("window.radloopWorkstation.state === 'worklist'")
    assert plat.case_view(case.sop)["lease_owner"] is None


def test_plain_enter_on_a_finding_does_not_submit(plat: Platform, desktop: Any) -> None:
    page, who = desktop, "dr-enter"
    (case,) = plat.add_cases([0.999_940])
    open_case(page, plat, who, case.sop)
    page.focus("input[name=label][value=normal]")
    page.keyboard.press("Space")
    page.keyboard.press("Enter")
    page.focus("#confidence")
    page.keyboard.press("Enter")
    page.wait_for_timeout(1500)
    assert page.evaluate("window.radloopWorkstation.submitted") == []
    assert page.evaluate("window.radloopWorkstation.caseId") == case.sop
    assert form(page)["label"] == "normal"
    # Ctrl+Enter, the documented key, does submit
    page.keyboard.press("Control+Enter")
    page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
    assert plat.case_view(case.sop)["final_label"]["label"] == "normal"


def test_the_keyboard_moves_the_confidence_and_opacity_sliders(plat: Platform, desktop: Any) -> None:
    page, who = desktop, "dr-keys"
    cases = plat.add_cases([0.999_931, 0.999_932, 0.999_930], same_series=True)
    open_case(page, plat, who, cases[1].sop)
    index = page.evaluate("window.radloopWorkstation.viewer().index")
    page.focus("#confidence")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#confidence") == "90" and page.inner_text("#confidence-out") == "90%"
    page.keyboard.press("ArrowLeft")
    assert page.input_value("#confidence") == "85"
    page.focus("#overlay-opacity")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#overlay-opacity") == "55"
    assert page.evaluate("window.radloopWorkstation.viewer().index") == index, "the sliders' keys are not the images'"
    # the viewer's own keys still work on the image
    page.focus("#viewport")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("(i) => window.radloopWorkstation.viewer().index !== i", arg=index)
    page.click("#release-case")
    page.wait_for_function("window.radloopWorkstation.state === 'worklist'")


def test_a_tap_on_the_phone_series_slider_does_not_toggle_the_overlay(plat: Platform, browser: Any) -> None:
    cases = plat.add_cases([0.999_921, 0.999_922, 0.999_920], same_series=True)
    ctx = browser.new_context(**PHONE)
    try:
        page = ctx.new_page()
        sign_in(page, plat, "dr-slider")
        page.wait_for_selector(f"button[data-open='{cases[1].sop}']")
        page.tap(f"button[data-open='{cases[1].sop}']")
        wait_reading(page, cases[1].sop)
        assert not page.evaluate("window.radloopWorkstation.overlay.visible")
        cdp = ctx.new_cdp_session(page)

        def tap(x: float, y: float) -> None:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y, "id": 0}]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

        r = page.eval_on_selector("#slider", "e => { const r = e.getBoundingClientRect(); "
                                  "return {x: r.x + r.width * 0.9, y: r.y + r.height / 2}; }")
        tap(r["x"], r["y"])
        page.wait_for_timeout(800)
        assert not page.evaluate("window.radloopWorkstation.overlay.visible"), "a slider tap is the slider's"
        # a tap on the image still toggles it
        v = page.eval_on_selector("#viewport", "e => { const r = e.getBoundingClientRect(); "
                                  "return {x: r.x + r.width / 2, y: r.y + r.height / 2}; }")
        tap(v["x"], v["y"])
        page.wait_for_function("window.radloopWorkstation.overlay.visible")
        page.tap("#release-case")
        page.wait_for_function("window.radloopWorkstation.state === 'worklist'")
    finally:
        ctx.close()


def test_a_failed_lease_renewal_is_retried_and_blames_another_reader_only_on_409(plat: Platform,
                                                                                  desktop: Any) -> None:
    page, who = desktop, "dr-renew"
    (case,) = plat.add_cases([0.999_910])
    open_case(page, plat, who, case.sop)
    page.check("input[name=label][value=normal]")
    page.fill("#comment", "draft comment")
    claims = "**/verification/cases/*/claim*"

    def unavailable(route: Any) -> None:
        if route.request.method == "POST":
            route.fulfill(status=503, content_type="application/json", body='{"detail": "Service Unavailable"}')
        else:
            route.continue_()

    # a short outage (less than the lease): renewals fail and are retried; the form stays usable, nobody is blamed
    page.route(claims, unavailable)
    page.wait_for_timeout(3500)
    assert form(page)["enabled"] and page.inner_text("#case-alert") == ""
    assert "retrying" in page.inner_text("#lease")
    page.unroute(claims)
    page.wait_for_function("!document.getElementById('lease').textContent.includes('retrying')", timeout=10_000)
    assert form(page)["enabled"] and plat.case_view(case.sop)["lease_owner"] == who
    # an outage longer than the lease (the network is gone): the form stops, without blaming another reader, and
    # comes back with the claim once the network does
    page.route(claims, lambda r: r.abort("internetdisconnected"))
    page.wait_for_function("document.getElementById('case-alert').textContent !== ''",
                           timeout=int((LEASE_S + 5) * 1000))
    assert "another reader" not in page.inner_text("#case-alert")
    assert not form(page)["enabled"] and form(page)["comment"] == "draft comment"
    page.unroute(claims)
    page.wait_for_function("!document.getElementById('submit-read').disabled", timeout=15_000)
    assert page.inner_text("#case-alert") == ""
    assert plat.case_view(case.sop)["lease_owner"] == who
    # a 409 does mean another reader
    page.route(claims, lambda r: r.fulfill(status=409, content_type="application/json",
                                           body='{"detail": "claimed by another reader"}') if r.request.method == "POST"
               else r.continue_())
    page.wait_for_function("document.getElementById('case-alert').textContent.includes('another reader')",
                           timeout=int(LEASE_S * 1000))
    assert not form(page)["enabled"]
    page.unroute(claims)
    page.click("#release-case")
    page.wait_for_function("window.radloopWorkstation.state === 'worklist'")


def test_a_draft_survives_an_expired_token_and_a_reload(plat: Platform, desktop: Any) -> None:
    """Found by a review (session 22): a 401 while reading (the token expired) sent the tab to sign in, and the case
    reopened after signing in with an empty form; a reload lost the draft too. Drafts are kept in this tab's
    sessionStorage until the read is saved, and Sign out clears them."""
    page, who = desktop, "dr-draft"
    (case,) = plat.add_cases([0.999_900])
    open_case(page, plat, who, case.sop)
    fill_read(page)
    page.route("**/verification/cases/*/claim*", lambda r: r.fulfill(
        status=401, content_type="application/json", body='{"detail": "token expired"}')
        if r.request.method == "POST" else r.continue_())
    page.wait_for_function("window.radloopWorkstation.state === 'signin'", timeout=int((LEASE_S + 5) * 1000))
    page.unroute("**/verification/cases/*/claim*")
    page.fill("#signin-name", who)
    page.select_option("#signin-role", "radiologist")
    page.click("#signin-dev button[type=submit]")
    wait_reading(page, case.sop)
    assert form(page) == {"label": "pneumonia", "confidence": "95",
                          "comment": "large RLL consolidation, call the ward", "enabled": True}
    page.reload()
    wait_reading(page, case.sop)
    assert form(page)["comment"] == "large RLL consolidation, call the ward"
    page.click("#submit-read")
    page.wait_for_function("window.radloopWorkstation.submitted.some((s) => s.response)", timeout=20_000)
    assert page.evaluate("sessionStorage.getItem('radloop.drafts')") is None  # saved: the draft is gone
    page.click("#signout")
    page.wait_for_function("window.radloopWorkstation.state === 'signin'")
    assert plat.case_view(case.sop)["final_label"]["label"] == "pneumonia"
