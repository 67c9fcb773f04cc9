"""Headless Chromium from the system packages (Debian's `chromium`), driven by Playwright for Python: nothing is
downloaded. Tests that need it skip, saying why, where no Chromium is installed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# the flags that keep Chromium from calling any host (updates, sync, safe browsing...) on a machine with no network
QUIET_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-default-apps"]


def chromium() -> str:
    """The system Chromium's path, or a skip saying how to get one."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium found: install Debian's `chromium` package (apt-get install chromium) to run the "
                    "browser tests; .ci/run installs it")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is a dev dependency: pip install -e '.[dev]'")
    return found


@dataclass
class Visit:
    """A page opened in the browser, with what it printed as errors and every URL it requested."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self, path: Path) -> None:
        """Load the HTML file at `path` (as a user double-clicking it would: a file:// URL)."""
        self.page.goto(path.resolve().as_uri())

    def outside_requests(self) -> list[str]:
        """Requests that did not read a local file."""
        return [url for url in self.requests if not url.startswith(("file:", "data:"))]


@contextmanager
def open_page(path: Path | None, width: int = 1300, height: int = 1000) -> Iterator[Visit]:
    """Headless Chromium watched for console errors and requests, showing the HTML file at `path` (if given)."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=QUIET_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            visit = Visit(page)
            page.on("console", lambda message: visit.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: visit.errors.append(str(error)))
            page.on("request", lambda request: visit.requests.append(request.url))
            if path is not None:
                visit.open(path)
            yield visit
        finally:
            browser.close()
