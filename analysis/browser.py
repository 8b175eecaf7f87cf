"""The report opened in headless Chromium, offline, through Playwright with the system's browser
(Debian's `chromium`; Playwright's own download is not needed). Used by the report's browser test
and by scripts/report_screenshot.py, which makes the README's picture."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser"])), None)
VIEWPORT = {"width": 1400, "height": 900}


@dataclass
class OpenReport:
    page: object  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # the page's JavaScript errors, as they come


@contextmanager
def opened(report: Path, viewport: dict = VIEWPORT) -> Iterator[OpenReport]:
    """The report, its scripts run, with every request off this file refused: it must need nothing else."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        raise FileNotFoundError(
            "no chromium on the PATH: install Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to start as root, as in CI containers.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            opened_report = OpenReport(browser.new_page(viewport=viewport))
            page, errors = opened_report.page, opened_report.errors
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.route("http*://**", lambda route: route.abort())
            page.goto(report.resolve().as_uri())
            yield opened_report
        finally:
            browser.close()
