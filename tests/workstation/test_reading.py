"""The workstation in single-read mode, in headless Chromium through the local entry point: sign-in, the AI-ordered
worklist, reading three cases (one with the Grad-CAM overlay), claims seen by a second reader, lease expiry, amending,
live performance for the ml role, the phone layout with touch, axe-core's WCAG A/AA rules, and the production
sign-in (OpenID Connect Authorization Code with PKCE; the identity provider is played by Playwright request routing,
as none is reachable here)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import pytest

from shared.auth import mint_token
from tests.workstation.conftest import (
    DESKTOP,
    LEASE_S,
    MODEL_VERSION,
    PHONE,
    Platform,
    axe_violations,
    sign_in,
    start_platform,
    wait_reading,
    watch_urls,
)

SHOTS = Path("var/workstation-screenshots")
pytestmark = pytest.mark.e2e  # a real browser (tests/conftest.py would say integration: it uses moto)
IDP = "https://idp.example.test/realms/hospital"


@pytest.fixture(scope="module")
def plat(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(aws_endpoint, tmp_path_factory.mktemp("ws-single"), read_mode="single")


@pytest.fixture(scope="module")
def reading_cases(plat: Platform) -> list[Any]:
    # arrival order differs from the AI order: the worklist must put urgent cases first, by falling probability
    return plat.add_cases([0.35, 0.93, 0.12, 0.71])


def assert_no_token_in_urls(urls: list[str]) -> None:
    for u in urls:
        q = parse_qs(urlparse(u).query)
        assert not ({"token", "access_token", "id_token"} & set(q)), f"a token in a URL: {u[:120]}"
        assert "eyJ" not in u, f"something like a JWT in a URL: {u[:120]}"


def test_radiologist_reads_three_cases_with_overlay_and_submit(plat: Platform, reading_cases: list[Any],
                                                               browser: Any) -> None:
    expected = [c.sop for c in sorted(reading_cases, key=lambda c: (c.priority != "urgent", -c.probability))]
    ctx = browser.new_context(**DESKTOP)
    page = ctx.new_page()
    urls: list[str] = []
    watch_urls(page, urls)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        sign_in(page, plat, "dr-a")
        assert page.inner_text("#who") == "dr-a · radiologist"
        assert page.is_hidden("#nav-performance"), "model performance is for the ml and admin roles"
        page.wait_for_selector("#worklist-table tbody tr")
        rows = page.eval_on_selector_all("#worklist-table tbody tr", "rs => rs.map(r => r.dataset.case)")
        assert rows == expected, "the worklist is in the verification service's order"
        first = page.inner_text(f"#worklist-table tr[data-case='{expected[0]}']")
        assert "Urgent" in first and "93.0%" in first and f"model v{MODEL_VERSION}" in first and "DX" in first
        assert "Unread" in first
        page.wait_for_function("document.querySelector('td.study-date').textContent === '2026-01-15'")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "worklist-desktop.png"))
        # keyboard: j moves down, k back up, Enter opens the selected case
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("k")
        assert page.evaluate("window.radloopWorkstation.selected") == expected[1]
        page.keyboard.press("k")
        page.keyboard.press("Enter")
        wait_reading(page, expected[0])
        assert "Claimed by you" in page.inner_text("#lease")
        assert plat.case_view(expected[0])["lease_owner"] == "dr-a"
        ai = page.inner_text("#ai-result")
        assert "93.0%" in ai and "threshold 50.0%" in ai and f"model v{MODEL_VERSION}" in ai
        # the Grad-CAM overlay: off, then on at the chosen opacity, drawn over the image
        assert not page.evaluate("window.radloopWorkstation.overlay.visible")
        page.check("#overlay-toggle")
        page.fill("#overlay-opacity", "70")
        page.dispatch_event("#overlay-opacity", "input")
        page.wait_for_function("document.getElementById('heatmap').complete && "
                               "document.getElementById('heatmap').naturalWidth > 0")
        ov = page.evaluate("window.radloopWorkstation.overlay")
        assert ov["visible"] and ov["opacity"] == pytest.approx(0.7)
        box = page.eval_on_selector("#heatmap", "e => e.getBoundingClientRect().width")
        assert box > 100
        page.screenshot(path=str(SHOTS / "reading-desktop.png"))
        # read 1: keyboard (a = pneumonia, Ctrl+Enter = submit and next)
        page.keyboard.press("a")
        page.keyboard.press("Control+Enter")
        wait_reading(page, expected[1])
        # read 2: with the mouse; the comment field takes letters that are viewer keys elsewhere
        page.check("input[name=label][value=pneumonia]")
        page.fill("#comment", "right lower zone consolidation")
        page.click("#submit-read")
        wait_reading(page, expected[2])
        page.keyboard.press("n")
        page.keyboard.press("Control+Enter")
        wait_reading(page, expected[3])
        page.wait_for_function("window.radloopWorkstation.submitted.length === 3")
        submitted = page.evaluate("window.radloopWorkstation.submitted")
        assert all("response" in s and s["response"]["status"] == "final" for s in submitted), submitted
        timings = page.evaluate("window.radloopWorkstation.timings")
        assert len(timings) == 3 and all(t["prefetched"] for t in timings), timings
        page.click("#release-case")
        page.wait_for_function("window.radloopWorkstation.state === 'worklist'")
    finally:
        ctx.close()
    labels = {sop: plat.case_view(sop)["final_label"] for sop in expected[:3]}
    assert {s: (v or {}).get("label") for s, v in labels.items()} == {
        expected[0]: "pneumonia", expected[1]: "pneumonia", expected[2]: "normal"}
    assert all(v["version"] == 1 for v in labels.values())
    hist = plat.case_view(expected[1])["history"]
    assert [h.get("comment") for h in hist if h["type"] == "read"] == ["right lower zone consolidation"]
    # released on leaving: nobody holds the fourth case
    assert plat.case_view(expected[3])["lease_owner"] is None
    verified = Counter(e["detail"]["sop_uid"] for e in plat.events(wait_s=3) if e["detail-type"] == "ImageVerified")
    assert verified == {s: 1 for s in expected[:3]}
    assert_no_token_in_urls(urls)
    assert not errors, errors


def test_second_reader_sees_the_case_is_claimed(plat: Platform, browser: Any) -> None:
    (case,) = plat.add_cases([0.88])
    a_ctx, b_ctx = browser.new_context(**DESKTOP), browser.new_context(**DESKTOP)
    try:
        a, b = a_ctx.new_page(), b_ctx.new_page()
        sign_in(a, plat, "dr-one")
        a.click(f"button[data-open='{case.sop}']")
        wait_reading(a, case.sop)
        sign_in(b, plat, "dr-two", query="?poll=1000")
        row = f"#worklist-table tr[data-case='{case.sop}'] td.claim"
        b.wait_for_function("(s) => document.querySelector(s)?.textContent === 'Claimed by dr-one'", arg=row)
        b.click(f"button[data-open='{case.sop}']")
        b.wait_for_function("document.getElementById('case-alert').textContent.includes('claimed by another reader')")
        assert b.is_disabled("#submit-read")
        assert plat.case_view(case.sop)["lease_owner"] == "dr-one"
        # A leaves the case: the claim is released, and B can take it
        a.click("#release-case")
        a.wait_for_function("window.radloopWorkstation.state === 'worklist'")
        assert plat.case_view(case.sop)["lease_owner"] is None
        b.click("#release-case")
        # B's release (of a claim it never held) must be back before B opens the case again: a release answered
        # after the open returned B to the worklist and the open never showed (a flake in a clean-clone run)
        b.wait_for_function("window.radloopWorkstation.state === 'worklist'")
        b.click(f"button[data-open='{case.sop}']")
        wait_reading(b, case.sop)
        assert plat.case_view(case.sop)["lease_owner"] == "dr-two"
        b.click("#release-case")
        b.wait_for_function("window.radloopWorkstation.state === 'worklist'")
    finally:
        a_ctx.close()
        b_ctx.close()


def test_an_expired_lease_returns_the_case_to_the_list(plat: Platform, browser: Any) -> None:
    (case,) = plat.add_cases([0.66])
    # another reader claims it and then disappears (no renewal, no release)
    assert plat.api("POST", f"/verification/cases/{case.sop}/claim", subject="dr-gone").status_code == 200
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        sign_in(page, plat, "dr-three", query="?poll=1000")
        row = f"#worklist-table tr[data-case='{case.sop}'] td.claim"
        page.wait_for_function("(s) => document.querySelector(s)?.textContent === 'Claimed by dr-gone'", arg=row)
        scroll_before = page.evaluate("window.radloopWorkstation.selected")
        page.wait_for_function("(s) => document.querySelector(s)?.textContent === 'Unread'", arg=row,
                               timeout=int((LEASE_S + 10) * 1000))
        # the refresh kept the selection
        assert page.evaluate("window.radloopWorkstation.selected") == scroll_before
        # a new urgent case appears by itself, announced, and the selection stays where it was
        (urgent,) = plat.add_cases([0.995])
        page.wait_for_selector(f"#worklist-table tr[data-case='{urgent.sop}']", timeout=15_000)
        assert page.evaluate("window.radloopWorkstation.selected") == scroll_before
        page.wait_for_function("document.getElementById('status').textContent.includes('new urgent case')")
        page.click(f"button[data-open='{case.sop}']")
        wait_reading(page, case.sop)
        assert plat.case_view(case.sop)["lease_owner"] == "dr-three"
        # skip: the case is released and another one opens
        page.keyboard.press("x")
        page.wait_for_function("(s) => window.radloopWorkstation.caseId && window.radloopWorkstation.caseId !== s",
                               arg=case.sop)
        other = page.evaluate("window.radloopWorkstation.caseId")
        wait_reading(page, other)
        assert plat.case_view(case.sop)["lease_owner"] is None
        assert plat.case_view(other)["lease_owner"] == "dr-three"
        page.click("#release-case")
        page.wait_for_function("window.radloopWorkstation.state === 'worklist'")
        assert plat.case_view(other)["lease_owner"] is None
    finally:
        ctx.close()


def test_amend_own_final_read_and_ml_sees_live_performance(plat: Platform, browser: Any,
                                                           reading_cases: list[Any]) -> None:
    (case,) = plat.add_cases([0.81])
    r = plat.api("POST", f"/verification/cases/{case.sop}/reads", subject="dr-amend", json={"label": "normal"})
    assert r.json()["status"] == "final"
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        sign_in(page, plat, "dr-amend")
        page.click("#nav a[data-nav=mine]")
        page.wait_for_selector(f"#mine-table tr[data-case='{case.sop}']")
        page.click(f"#mine-table tr[data-case='{case.sop}'] a")
        wait_reading(page, case.sop)
        assert page.inner_text("#form-title") == "Amend your read"
        assert "Final label: normal (version 1" in page.inner_text("#reads")
        page.check("input[name=label][value=pneumonia]")
        page.click("#submit-read")
        page.wait_for_function("document.getElementById('reads').textContent.includes('Final label: pneumonia "
                               "(version 2, amended)')")
        page.click("#release-case")
        page.click("#signout")
        page.wait_for_function("window.radloopWorkstation.state === 'signin'")
        assert page.evaluate("sessionStorage.getItem('radloop.token')") is None
        sign_in(page, plat, "ml-1", "ml")
        assert page.inner_text("#who") == "ml-1 · ml"
        page.click("#nav-performance")
        page.wait_for_selector(f"#perf-table tr[data-version='{MODEL_VERSION}']")
        text = page.inner_text(f"#perf-table tr[data-version='{MODEL_VERSION}']")
        api = plat.api("GET", "/verification/metrics/model-performance", role="ml").json()
        n = next(v["sample_size"] for v in api["versions"] if v["model_version"] == MODEL_VERSION)
        assert text.split("\t")[:2] == [f"v{MODEL_VERSION}", str(n)] and n >= 4
    finally:
        ctx.close()
    v = plat.case_view(case.sop)
    assert v["final_label"]["label"] == "pneumonia" and v["final_label"]["version"] == 2


def test_phone_reads_a_case_end_to_end_with_touch(plat: Platform, browser: Any) -> None:
    # one series of three radiographs; the most urgent is the middle one, so a swipe either way shows another image
    cases = plat.add_cases([0.95, 0.97, 0.96], same_series=True)
    ctx = browser.new_context(**PHONE)
    page = ctx.new_page()
    try:
        sign_in(page, plat, "dr-phone")
        page.wait_for_selector(f"#worklist-table tr[data-case='{cases[1].sop}']")
        page.screenshot(path=str(SHOTS / "worklist-phone.png"))
        page.tap(f"button[data-open='{cases[1].sop}']")
        wait_reading(page, cases[1].sop)
        assert page.evaluate("window.radloopWorkstation.viewer()")["index"] == 1
        cdp = ctx.new_cdp_session(page)
        vp = page.eval_on_selector("#viewport", "e => { const r = e.getBoundingClientRect(); "
                                   "return {x: r.x + r.width / 2, y: r.y + r.height / 2}; }")
        x, y = vp["x"], vp["y"]

        def touch(kind: str, points: list[tuple[float, float]]) -> None:
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
                {"x": px, "y": py, "id": i} for i, (px, py) in enumerate(points)]})

        # tap toggles the overlay
        touch("touchStart", [(x, y)])
        touch("touchEnd", [])
        page.wait_for_function("window.radloopWorkstation.overlay.visible")
        # the overlay covers the image exactly (the square radiograph fits the viewport's smaller side); on the CPU
        # render path with devicePixelRatio 2 it was once half that size
        size = page.evaluate("""() => { const v = document.getElementById('viewport').getBoundingClientRect();
            const h = document.getElementById('heatmap').getBoundingClientRect();
            return {side: Math.min(v.width, v.height), w: h.width, h: h.height}; }""")
        assert abs(size["w"] - size["side"]) < 4 and abs(size["h"] - size["side"]) < 4, size
        # one-finger swipe: another image of the series
        start = page.evaluate("window.radloopWorkstation.viewer().index")
        touch("touchStart", [(x, y)])
        for k in range(1, 13):
            touch("touchMove", [(x, y - 12 * k)])
            page.wait_for_timeout(16)
        touch("touchEnd", [])
        page.wait_for_function("(s) => window.radloopWorkstation.viewer().index !== s", arg=start)
        # pinch: two fingers apart zoom in (a smaller parallel scale)
        scale = page.evaluate("window.radloopWorkstation.viewer().parallelScale")
        touch("touchStart", [(x - 30, y), (x + 30, y)])
        for k in range(1, 11):
            touch("touchMove", [(x - 30 - 8 * k, y), (x + 30 + 8 * k, y)])
            page.wait_for_timeout(16)
        touch("touchEnd", [])
        # fingers spread apart: the image is shown larger (a smaller parallel scale), and only by a sane factor
        page.wait_for_function("(s) => window.radloopWorkstation.viewer().parallelScale < s * 0.7", arg=scale)
        assert page.evaluate("window.radloopWorkstation.viewer().pinchMoves") == 10
        assert page.evaluate("window.radloopWorkstation.viewer().parallelScale") > scale * 0.2
        assert page.evaluate("window.radloopWorkstation.overlay.visible"), "pinch and swipe are not taps"
        page.screenshot(path=str(SHOTS / "reading-phone.png"))
        page.tap("input[name=label][value=pneumonia]")
        page.tap("#submit-read")
        # the next case of the queue opens (the most urgent unread one: other tests of the module leave some)
        page.wait_for_function("(s) => window.radloopWorkstation.caseId && window.radloopWorkstation.caseId !== s",
                               arg=cases[1].sop)
        wait_reading(page, page.evaluate("window.radloopWorkstation.caseId"))
        page.wait_for_function("window.radloopWorkstation.submitted.length === 1")
        page.tap("#release-case")
        page.wait_for_function("window.radloopWorkstation.state === 'worklist'")
    finally:
        ctx.close()
    assert plat.case_view(cases[1].sop)["final_label"]["label"] == "pneumonia"


def test_axe_finds_no_wcag_a_or_aa_violations(plat: Platform, browser: Any, reading_cases: list[Any]) -> None:
    (case,) = plat.add_cases([0.9])
    for viewport in (DESKTOP, PHONE):
        ctx = browser.new_context(**viewport)
        try:
            page = ctx.new_page()
            sign_in(page, plat, "dr-axe")
            page.wait_for_selector("#worklist-table tbody tr")
            assert axe_violations(page) == [], "worklist"
            page.click(f"button[data-open='{case.sop}']")
            wait_reading(page, case.sop)
            page.check("#overlay-toggle")
            assert axe_violations(page) == [], "reading view"
            page.click("#release-case")
            page.wait_for_function("window.radloopWorkstation.state === 'worklist'")
        finally:
            ctx.close()

def test_pkce_challenge_matches_rfc_7636(plat: Platform, browser: Any) -> None:
    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        page.goto(plat.worklist_url)
        page.wait_for_function("window.radloopWorkstation && window.radloopWorkstation.state === 'signin'")
        got = page.evaluate("window.radloopWorkstation.pkceChallenge('dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk')")
        assert got == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    finally:
        ctx.close()


def test_authorization_code_with_pkce_signs_in(plat: Platform, browser: Any) -> None:
    seen: dict[str, Any] = {}
    access = mint_token(plat.settings, "radiologist", subject="dr-oidc")

    def config(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps({
            "environment": "prod", "dev_signin": False, "roles": [],
            "oidc": {"issuer": IDP, "client_id": "radloop-ws", "scope": "openid profile", "audience": "radloop"}}))

    def discovery(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", headers={"Access-Control-Allow-Origin": "*"},
                      body=json.dumps({"issuer": IDP, "authorization_endpoint": f"{IDP}/auth",
                                       "token_endpoint": f"{IDP}/token"}))

    def authorize(route: Any) -> None:
        q = {k: v[0] for k, v in parse_qs(urlparse(route.request.url).query).items()}
        seen["authorize"] = q
        back = q["redirect_uri"] + "?" + urlencode({"code": "one-time-code", "state": q["state"]})
        route.fulfill(status=302, headers={"Location": back})

    def token(route: Any) -> None:
        if route.request.method == "OPTIONS":
            route.fulfill(status=204, headers={"Access-Control-Allow-Origin": "*",
                                               "Access-Control-Allow-Headers": "content-type, accept",
                                               "Access-Control-Allow-Methods": "POST"})
            return
        form = {k: v[0] for k, v in parse_qs(route.request.post_data or "").items()}
        seen["token"] = form
        id_token = jwt.encode({"sub": "dr-oidc", "nonce": seen["authorize"]["nonce"], "name": "Dr Oidc"}, "x" * 32,
                              algorithm="HS256")
        route.fulfill(status=200, content_type="application/json", headers={"Access-Control-Allow-Origin": "*"},
                      body=json.dumps({"access_token": access, "id_token": id_token, "token_type": "Bearer"}))

    ctx = browser.new_context(**DESKTOP)
    try:
        page = ctx.new_page()
        urls: list[str] = []
        watch_urls(page, urls)
        page.route("**/viewer/auth/config", config)
        page.route(f"{IDP}/.well-known/openid-configuration", discovery)
        page.route(f"{IDP}/auth?*", authorize)
        page.route(f"{IDP}/token", token)
        page.goto(plat.worklist_url)
        page.wait_for_function("window.radloopWorkstation && window.radloopWorkstation.state === 'signin'")
        assert page.is_hidden("#signin-dev"), "no development sign-in outside local"
        page.click("#signin-oidc")
        page.wait_for_function("window.radloopWorkstation && window.radloopWorkstation.state === 'worklist'")
        assert page.inner_text("#who") == "dr-oidc · radiologist"
        a, t = seen["authorize"], seen["token"]
        assert (a["response_type"], a["client_id"], a["code_challenge_method"]) == ("code", "radloop-ws", "S256")
        assert a["redirect_uri"] == f"{plat.base}/viewer/worklist/"
        challenge = base64.urlsafe_b64encode(hashlib.sha256(t["code_verifier"].encode()).digest()).rstrip(b"=")
        assert challenge.decode() == a["code_challenge"], "the verifier sent matches the challenge"
        assert (t["grant_type"], t["code"], t["client_id"]) == ("authorization_code", "one-time-code", "radloop-ws")
        assert "code=" not in page.url and "state=" not in page.url, "the one-time code leaves the address bar"
        assert not any(access in u for u in urls), "the token never appears in a URL"
    finally:
        ctx.close()
