"""The page at / in real headless Chromium: it builds a form from the signature, submits
it, and shows the streamed answer and the trace table."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(_CHROMIUM is None, reason="needs the system chromium (scripts/test.sh installs it)")

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser(p: Any, profile: str) -> Any:
    # a persistent context is how a fresh, empty --user-data-dir is given to Chromium
    return p.chromium.launch_persistent_context(profile, executable_path=_CHROMIUM, headless=True, args=_FLAGS,
                                                timeout=60_000)


@pytest.mark.timeout(180)
def test_page_submits_a_form_and_shows_the_streamed_answer(serve: Any, lm: Any, fake_lm: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from dspex.pipeline import Pipeline, native

    from . import programs_for_tests as progs

    Pipeline([native(progs.shout, writes="loud"), native(progs.count_words, writes="n")],
             inputs={"question": str}).save(tmp_path / "p.yaml")
    monkeypatch.setenv("DSPEX_TEST_PAGE_KEY", "page-key")
    srv = serve(programs=[{"name": "qa", "signature": "question: str, k: int -> answer: int",
                           "module": "ChainOfThought"}],
                pipelines=[{"name": "words", "path": str(tmp_path / "p.yaml"), "allow": ["serve.programs_for_tests:*"]}],
                lm=lm, api_key_env="DSPEX_TEST_PAGE_KEY")
    fake_lm.script(["[[ ## reasoning ## ]]\nsix times seven\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"])
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = _browser(p, profile)
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            page.goto(srv.url + "/")
            expect(page.locator("#status")).to_contain_text("API key")
            page.fill("#apikey", "page-key")
            page.dispatch_event("#apikey", "change")
            expect(page.locator("#status")).to_contain_text("endpoint(s)")
            page.wait_for_selector("#in-question")
            assert page.get_attribute("#in-k", "type") == "number"  # the form follows the signature's types
            page.fill("#in-question", "what is 6*7?")
            page.fill("#in-k", "3")
            page.click("#submit")
            page.wait_for_selector('#outputs .field[data-field="answer"]')
            expect(page.locator("#status")).to_contain_text("done (request")
            assert page.text_content('#outputs .field[data-field="answer"] span:last-child') == "42"
            assert "six times seven" in (page.text_content('#outputs .field[data-field="reasoning"]') or "")
            cells = page.locator("#trace tbody tr td").all_text_contents()
            assert cells[:3] == ["qa", "native", "native"]
            sent = fake_lm.requests[-1]["json"]["messages"][-1]["content"]
            assert "what is 6*7?" in sent and "3" in sent

            page.fill("#in-k", "")  # a missing required field: the 422 names it on the page
            page.click("#submit")
            expect(page.locator("#status")).to_have_class("error")
            assert "k: missing" in (page.text_content("#status") or "")

            page.select_option("#endpoint", "words")  # the pipeline: streamed step events, two trace rows
            page.wait_for_selector("#in-question")
            page.fill("#in-question", "one two three")
            page.click("#submit")
            expect(page.locator("#status")).to_contain_text("done (request")
            assert page.text_content('#outputs .field[data-field="n"] span:last-child') == "3"
            assert page.locator("#trace tbody tr").count() == 2
            assert "StepFinished" in (page.text_content("#events") or "")
        finally:
            ctx.close()
