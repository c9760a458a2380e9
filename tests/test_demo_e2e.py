"""End-to-end tests of the order-entry demo page in a real browser (headless Debian Chromium, Playwright).

The service runs in this process (the real app factory with the demo page, a temporary SQLite store)
on an ephemeral loopback port; Chromium drives the page as a clinician would. The assertions are on
what does not change with card wording: indicators, suggestion labels naming MRI, order codes in the
basket, rating badges, the JSON exchanged, and the feedback store.

Screenshots of each step go to ``$CDS_DEMO_SCREENSHOTS`` (default ``build/screenshots/``).
Chromium is Debian's ``/usr/bin/chromium`` (``$CDS_CHROMIUM`` to override); Playwright never downloads
a browser. Without Chromium the tests are skipped with the reason on a developer machine and fail in
CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from support import REPO
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service.app import create_app
from cds_service.demo.catalogue import patients_for
from cds_service.registry import load_registry
from cds_service.settings import Settings
from cds_service.store import Store

CHROMIUM = os.environ.get("CDS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("CDS_DEMO_SCREENSHOTS", REPO / "build" / "screenshots"))
# Flags for a sandbox-less root container with no outside network: no first-run UI, no background
# connections (they would be refused, noisily), no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the test extra was not installed
    sync_playwright = None  # type: ignore[assignment]

Shot = Callable[..., Path]  # shot(page, step, full_page=True): a screenshot of a step


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI: .ci/run installs it)")
    pytest.skip(f"{reason}; install it to run the browser tests (see README)")


@dataclass
class DemoServer:
    base_url: str
    app: Flask

    @property
    def store(self) -> Store:
        store: Store = self.app.extensions["cds_service"].store
        return store


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Serve an app on an ephemeral loopback port in a thread; yields its base URL."""
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        app.extensions["cds_service"].store.close()


@pytest.fixture(scope="module")
def demo_server() -> Iterator[DemoServer]:
    with tempfile.TemporaryDirectory(prefix="cds-demo-") as tmp:
        app = create_app(Settings(data_dir=str(Path(tmp) / "data")), demo=True)
        with serving(app) as url:
            yield DemoServer(url, app)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    # launch() gives every run a fresh, empty user-data-dir of its own.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    problems: list[str] = []
    # A script error or a Content-Security-Policy violation is a failure of the page.
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(f"{message.text} ({message.location.get('url')})") if message.type == "error" else None
        ),
    )
    try:
        yield opened
    finally:
        context.close()
    # Some tests make the service answer 4xx on purpose, and the browser reports those responses too;
    # a 4xx for anything else (a missing asset) is a failure.
    expected_error = re.compile(r"status of 4\d\d .*\(http://127\.0\.0\.1:\d+/(cds-services/|demo/api/record)")
    unexpected = [text for text in problems if not expected_error.search(text)]
    assert not unexpected, unexpected


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shot:
    """Save a screenshot of a step: $CDS_DEMO_SCREENSHOTS/<test>--<step>.png (default build/screenshots/)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test_name = request.node.name.removeprefix("test_")

    def take(target: Page, step: str, full_page: bool = True) -> Path:
        path = SCREENSHOTS / f"{test_name}--{step}.png"
        target.screenshot(path=str(path), full_page=full_page)
        return path

    return take


# -- helpers -----------------------------------------------------------------------------------


def open_patient(page: Page, server: DemoServer, key: str) -> None:
    page.goto(f"{server.base_url}/demo/?patient={key}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#patient-select")).to_have_value(key)


def add_order(page: Page, query: str) -> None:
    """Search the orderables and add the single match."""
    calls = exchange_count(page, "order-select")
    page.fill("#search", query)
    results = page.locator("#results button")
    expect(results).to_have_count(1)
    results.click()
    wait_for_answer(page, "order-select", calls)


def exchange_count(page: Page, label: str) -> int:
    return page.locator(f'.exchange[data-label="{label}"]').count()


def wait_for_answer(page: Page, label: str, before: int) -> None:
    """Wait until a new exchange with this label has its response, and the page has rendered it."""
    exchanges = page.locator(f'.exchange[data-label="{label}"]')
    expect(exchanges).to_have_count(before + 1)
    expect(exchanges.first).not_to_have_attribute("data-status", "")
    page.wait_for_function("() => !document.querySelector('.badge.stale')")


def last_json(page: Page, label: str, part: str) -> Any:
    """The request or response JSON of the newest exchange with this label, as shown in the panel."""
    if part == "response" and page.locator("#raw-toggle").is_checked():
        page.locator("#raw-toggle").uncheck()
    text = page.locator(f'.exchange[data-label="{label}"] pre.{part}').first.text_content()
    assert text
    return json.loads(text)


def basket_codes(page: Page) -> list[str]:
    return [code for code in page.locator("#basket li.order").evaluate_all("els => els.map(e => e.dataset.codes)")]


def card(page: Page, indicator: str) -> Any:
    return page.locator(f'#cards article.card[data-indicator="{indicator}"]')


# -- the clinical stories ----------------------------------------------------------------------


def test_failed_therapy_ct_changes_to_mri(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "failed-therapy-radiculopathy")
    expect(page.locator("#problems")).to_contain_text("radiculopathy")
    expect(page.locator("#medications")).to_contain_text("buprofen")
    shot(page, "1-patient")

    add_order(page, "72131")
    request = last_json(page, "order-select", "request")
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert request["context"]["selections"] == [f"ServiceRequest/{draft['id']}"]
    discovery = page.evaluate("fetch('/cds-services').then(r => r.json())")
    select_service = next(s for s in discovery["services"] if s["hook"] == "order-select")
    assert set(request["prefetch"]) == set(select_service["prefetch"]), "full prefetch"

    change = card(page, "info").locator("button.suggestion", has_text="MRI")
    expect(change).to_have_count(1)
    suggestion_uuid = change.get_attribute("data-suggestion-uuid")
    card_uuid = card(page, "info").get_attribute("data-card-uuid")
    shot(page, "2-card")
    shot(page, "2-card-screen", full_page=False)  # what fits a 1280 x 900 screen (README: docs/images/)

    before = exchange_count(page, "order-select")
    change.click()
    wait_for_answer(page, "order-select", before)
    assert basket_codes(page) == ["72148 30679-5"]
    badge = page.locator("#basket li.order .badge")
    expect(badge).to_have_attribute("data-rating", "appropriate")
    expect(badge).to_contain_text("Appropriate")
    shot(page, "3-accepted")

    feedback = last_json(page, "feedback", "request")["feedback"]
    assert feedback[0]["outcome"] == "accepted" and feedback[0]["card"] == card_uuid
    assert feedback[0]["acceptedSuggestions"] == [{"id": suggestion_uuid}]
    stored = [f.item for f in demo_server.store.recent_feedback() if f.item.card == card_uuid]
    assert [item.accepted_suggestions for item in stored] == [(suggestion_uuid,)]


def test_acute_pain_mri_warning_remove_empties_the_basket(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "acute-lbp")
    add_order(page, "72148")
    warning = card(page, "warning")
    expect(warning).to_have_count(1)
    expect(page.locator("#basket .badge")).to_have_attribute("data-rating", "not-appropriate")
    remove = warning.locator("button.suggestion")
    expect(remove).to_have_count(1)
    response = last_json(page, "order-select", "response")
    actions = [a for c in response["cards"] for s in c.get("suggestions", ()) for a in s.get("actions", ())]
    assert [a["type"] for a in actions] == ["delete"]
    shot(page, "1-warning")

    remove.click()
    expect(page.locator("#basket li.order")).to_have_count(0)
    expect(page.locator("#basket-empty")).to_be_visible()
    expect(page.locator(".badge")).to_have_count(0)
    expect(page.locator("#cards article")).to_have_count(0)
    expect(page.locator(".exchange").first).to_have_attribute("data-label", "feedback")
    shot(page, "2-removed")


def test_cauda_equina_gets_a_critical_card(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "cauda-equina")
    add_order(page, "72131")
    critical = card(page, "critical")
    expect(critical).to_have_count(1)
    expect(critical.locator(".indicator-label")).to_have_text("Critical: ")
    # A critical card comes first and reads as critical to a screen reader, not only by colour.
    expect(page.locator("#cards article").first).to_have_attribute("data-indicator", "critical")
    expect(critical.locator("button.suggestion", has_text="MRI")).to_have_count(1)
    shot(page, "1-critical")

    before = exchange_count(page, "order-select")
    critical.locator("button.suggestion", has_text="MRI").click()
    wait_for_answer(page, "order-select", before)
    assert basket_codes(page) and "72148" in basket_codes(page)[0].split()
    shot(page, "2-urgent-mri")


def test_dismiss_with_an_override_reason_is_stored(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "failed-therapy-radiculopathy")
    add_order(page, "72131")
    info = card(page, "info")
    card_uuid = info.get_attribute("data-card-uuid")
    assert card_uuid
    info.locator("button.dismiss").click()
    form = info.locator("form.override")
    expect(form).to_be_visible()
    reasons = form.locator('input[type="radio"]')
    assert reasons.count() >= 2
    chosen = reasons.nth(1)
    code = chosen.get_attribute("data-code")
    chosen.check()
    form.locator("textarea").fill("Patient prefers CT; discussed.")
    shot(page, "1-override-form")

    before = exchange_count(page, "feedback")
    form.locator('button[type="submit"]').click()
    expect(page.locator('.exchange[data-label="feedback"]')).to_have_count(before + 1)
    expect(page.locator('.exchange[data-label="feedback"]').first).to_have_attribute("data-status", "200")
    expect(page.locator("#cards article")).to_have_count(0)
    shot(page, "2-dismissed")

    stored = [f for f in demo_server.store.recent_feedback() if f.item.card == card_uuid]
    assert len(stored) == 1
    item = stored[0].item
    assert stored[0].service_id == "lumbar-imaging-order-select"
    assert item.outcome == "overridden"
    assert item.override_reason is not None and item.override_reason.reason is not None
    assert item.override_reason.reason.code == code
    assert item.override_reason.user_comment == "Patient prefers CT; discussed."
    # The order itself is untouched by a dismissal: still the CT, still rated.
    assert basket_codes(page) == ["72131 30620-9"]


def test_sign_two_drafts(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "acute-lbp")
    add_order(page, "72133")
    add_order(page, "72100")
    # order-select: the newly added order is the selection; the first draft is context.
    request = last_json(page, "order-select", "request")
    assert len(request["context"]["draftOrders"]["entry"]) == 2
    assert len(request["context"]["selections"]) == 1

    before = exchange_count(page, "order-sign")
    page.locator("#sign").click()
    wait_for_answer(page, "order-sign", before)
    signed_request = last_json(page, "order-sign", "request")
    assert signed_request["hook"] == "order-sign"
    assert "selections" not in signed_request["context"]
    drafts = [entry["resource"] for entry in signed_request["context"]["draftOrders"]["entry"]]
    assert len(drafts) == 2
    # Every draft is rated at signing, and the cards shown are the order-sign cards.
    badges = page.locator("#basket li.order .badge")
    expect(badges).to_have_count(2)
    assert set(badges.evaluate_all("els => els.map(e => e.dataset.rating)")) == {"not-appropriate"}
    expect(page.locator('#cards article[data-hook="order-sign"]')).to_have_count(2)
    expect(page.locator("#sign-anyway")).to_be_visible()
    shot(page, "1-sign-cards")

    page.locator("#sign-anyway").click()
    expect(page.locator("#signed-list li")).to_have_count(2)
    expect(page.locator("#basket li.order")).to_have_count(0)
    expect(page.locator("#signed-list .badge").first).to_contain_text("urn:uuid:")
    shot(page, "2-signed")


def test_a_service_error_is_shown_with_its_diagnostics(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    # The EHR sends the order alone (no prefetch, no FHIR server): the service cannot decide and says why.
    open_patient(page, demo_server, "no-record")
    expect(page.locator("#problems")).to_contain_text("unknown")
    add_order(page, "72148")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("role", "alert")
    outcome = last_json(page, "order-select", "response")
    assert outcome["resourceType"] == "OperationOutcome"
    expect(page.locator('.exchange[data-label="order-select"]').first).to_have_attribute("data-status", "412")
    expect(error).to_contain_text("412")
    expect(error).to_contain_text(outcome["issue"][0]["diagnostics"])
    expect(page.locator(".badge")).to_have_count(0)
    shot(page, "1-412")

    # A FHIR server the service may not call: the service's own answer names it.
    page.locator('input[name="source"][value="fhir"]').check()
    page.fill("#fhir-base", "https://fhir.example.org/r4")
    page.fill("#fhir-patient", "p1")
    page.locator('#fhir-form button[type="submit"]').click()
    expect(error).to_contain_text("https://fhir.example.org/r4 is not allowed")
    shot(page, "2-not-allowed")


def test_fhir_server_patient_is_read_by_the_service(browser: Browser, shot: Shot) -> None:
    """FHIR-server mode: the page sends fhirServer and no prefetch; the service fetches the record itself."""
    base = "https://fhir.test/r4"
    patient = next(p for p in patients_for(date.today())["patients"] if p["key"] == "failed-therapy-radiculopathy")
    with tempfile.TemporaryDirectory(prefix="cds-demo-fhir-") as tmp, responses.RequestsMock() as fhir:
        # The FHIR server answers every query of the service definition from the bundled record.
        definition = load_registry(None).get("lumbar-imaging-order-select")
        assert definition is not None
        for key, template in definition.prefetch.items():
            path = template.split("?")[0].replace("{{context.patientId}}", patient["patientId"])
            fhir.get(f"{base}/{path}", json=patient["prefetch"][key])
        app = create_app(Settings(data_dir=str(Path(tmp) / "data"), fhir_servers=(base,)), demo=True)
        with serving(app) as url:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            try:
                page.goto(f"{url}/demo/")
                expect(page.locator("body")).to_have_attribute("data-ready", "true")
                page.locator('input[name="source"][value="fhir"]').check()
                page.fill("#fhir-base", base)
                page.fill("#fhir-patient", patient["patientId"])
                page.fill("#fhir-token", "demo-token")
                page.locator('#fhir-form button[type="submit"]').click()
                expect(page.locator("#problems")).to_contain_text("radiculopathy")
                expect(page.locator("#banner")).to_contain_text("male")
                add_order(page, "72131")
                request = last_json(page, "order-select", "request")
                assert request["fhirServer"] == base and "prefetch" not in request
                assert request["fhirAuthorization"]["access_token"] == "demo-token"
                expect(card(page, "info").locator("button.suggestion", has_text="MRI")).to_have_count(1)
                expect(page.locator("#basket .badge")).to_have_attribute("data-rating", "appropriate")
                shot(page, "1-fhir-card")
            finally:
                context.close()
        tokens = {call.request.headers.get("Authorization") for call in fhir.calls if base in call.request.url}
        assert tokens == {"Bearer demo-token"}


# -- client behaviour --------------------------------------------------------------------------


def test_badges_follow_every_response(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "failed-therapy-radiculopathy")
    add_order(page, "72131")
    ct_badge = page.locator("#basket li.order").first.locator(".badge")
    expect(ct_badge).to_have_attribute("data-rating", "appropriate")
    # A new selection (an NSAID) re-fires order-select; the CT is context now and its rating is cleared.
    add_order(page, "naproxen 500")
    expect(ct_badge).to_have_count(0)
    expect(card(page, "info").locator("button.suggestion", has_text="MRI")).to_have_count(1)
    shot(page, "1-nsaid-selected")
    # Ticking the CT again asks for both; unticking everything clears cards and ratings without a call.
    before = exchange_count(page, "order-select")
    page.locator("#basket li.order").first.locator('input[type="checkbox"]').check()
    wait_for_answer(page, "order-select", before)
    expect(ct_badge).to_have_attribute("data-rating", "appropriate")
    calls = exchange_count(page, "order-select")
    for checkbox in page.locator('#basket input[type="checkbox"]').all():
        checkbox.uncheck()
    expect(page.locator(".badge")).to_have_count(0)
    expect(page.locator("#cards article")).to_have_count(0)
    assert exchange_count(page, "order-select") == calls + 1  # the first untick still left one selected


def test_keyboard_only(page: Page, demo_server: DemoServer, shot: Shot) -> None:
    open_patient(page, demo_server, "failed-therapy-radiculopathy")

    def tab_to(selector: str, limit: int = 80) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#search")
    page.keyboard.type("ct lumbar 72131")
    expect(page.locator("#results button")).to_have_count(1)
    before = exchange_count(page, "order-select")
    tab_to("#results button")
    page.keyboard.press("Enter")
    wait_for_answer(page, "order-select", before)
    tab_to("#cards button.suggestion")
    focused = page.evaluate("document.activeElement.textContent")
    assert "MRI" in focused
    shot(page, "1-suggestion-focused")
    before = exchange_count(page, "order-select")
    page.keyboard.press("Enter")
    wait_for_answer(page, "order-select", before)
    assert basket_codes(page) == ["72148 30679-5"]
    # The dismiss form opens, takes a reason and closes from the keyboard too.
    open_patient(page, demo_server, "acute-lbp")
    tab_to("#search")
    page.keyboard.type("72148")
    before = exchange_count(page, "order-select")
    tab_to("#results button")
    page.keyboard.press("Space")
    wait_for_answer(page, "order-select", before)
    tab_to("#cards button.dismiss")
    page.keyboard.press("Enter")
    expect(page.locator("form.override")).to_be_visible()
    assert page.evaluate("document.activeElement.type") == "radio"
    page.keyboard.press("Space")  # choose the focused (first) reason
    page.keyboard.press("Escape")
    expect(page.locator("form.override")).to_be_hidden()
    assert page.evaluate("document.activeElement.classList.contains('dismiss')")


@pytest.mark.parametrize("width", [1280, 390])
def test_no_sideways_scrolling_at_desktop_and_phone_widths(
    browser: Browser, demo_server: DemoServer, shot: Shot, width: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 844})
    context.set_default_timeout(TIMEOUT_MS)
    sized = context.new_page()
    try:
        open_patient(sized, demo_server, "prior-laminectomy")  # a card with several suggestions and long lines
        add_order(sized, "72131")
        expect(sized.locator("#cards article button.suggestion").first).to_be_visible()
        overflow = sized.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a {width} px window"
        shot(sized, "1-card")
    finally:
        context.close()


def test_card_markdown_is_rendered_safely(page: Page, demo_server: DemoServer) -> None:
    open_patient(page, demo_server, "acute-lbp")
    rendered = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/demo/static/markdown.js');
            const detail = [
              '**Red flags** and *evidence*: `M54.16`',
              '',
              '- first <b>not bold</b>',
              '- [guideline](https://acsearch.acr.org/list) and [bad](javascript:alert(1))',
              '  - nested',
              '',
              '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>',
              '',
              '| a | b |', '|---|:-:|', '| 1 | <i>2</i> |',
            ].join('\\n');
            const box = document.createElement('div');
            box.appendChild(renderMarkdown(detail));
            document.body.appendChild(box);
            await new Promise(r => setTimeout(r, 100));
            return {
              html: box.innerHTML,
              elements: [...box.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
              hrefs: [...box.querySelectorAll('a')].map(a => [a.textContent, a.href, a.rel, a.target]),
              attributes: [...box.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name)),
              text: box.textContent,
              pwned: window.pwned ?? null,
            };
        }"""
    )
    assert rendered["pwned"] is None
    assert not {"img", "script", "b", "i", "iframe"} & set(rendered["elements"])
    assert {"strong", "em", "code", "ul", "li", "table", "th", "td"} <= set(rendered["elements"])
    assert not [name for name in rendered["attributes"] if name.startswith("on")]
    assert rendered["hrefs"] == [["guideline", "https://acsearch.acr.org/list", "noopener noreferrer", "_blank"]]
    assert "<b>not bold</b>" in rendered["text"] and "<script>" in rendered["text"]
    assert re.search(r"<ul>.*<ul><li>nested</li></ul>", rendered["html"])
