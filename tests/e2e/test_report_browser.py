"""The report as a person sees it: headless Chromium loads its pages from disk with no console error, every
section and image is there, and a screenshot is not blank.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes, read from file descriptor 4 and written to 3), with the standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

import cafe_core

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not found (Debian: apt-get install -y chromium); the page is not rendered"
)


class DevTools:
    """A headless Chromium driven over ``--remote-debugging-pipe``."""

    def __init__(self, profile, width=1200, height=1600):
        to_chrome_read, self._write = os.pipe()
        self._read, from_chrome_write = os.pipe()

        def wire():  # in the child: the protocol reads fd 3 and writes fd 4
            os.dup2(to_chrome_read, 3)
            os.dup2(from_chrome_write, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_read)
        os.close(from_chrome_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.page_id = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", on_page=True)
        self.call("Emulation.setDeviceMetricsOverride", on_page=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _message(self, deadline):
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, on_page=False, timeout=60, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if on_page:
            message["sessionId"] = self.page_id
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def open(self, url, timeout=60):
        """Navigate and wait for the load event; returns the events seen while loading."""
        self.events.clear()
        self.call("Page.navigate", on_page=True, url=url)
        deadline = time.time() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(deadline))
        return list(self.events)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", on_page=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result["result"].get("value")

    def screenshot(self, path, full_page=False):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", on_page=True, **params)["data"]))
        return path

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, ConnectionError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


def problems_in(events):
    """Console errors and warnings, uncaught exceptions, failed loads and error log entries."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"failed load: {params.get('errorText')}")
    return found


PAGE_STATE = """JSON.stringify({
  sections: [...document.querySelectorAll('h2')].map(h => h.id || h.textContent),
  images: [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]),
  text: document.body.innerText
})"""


def assert_not_blank(path):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.reshape(-1, 3).std(axis=0).max() > 20, "the screenshot is (nearly) one colour"
    non_white = (pixels < 235).any(axis=2).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the screenshot is not white"
    # coloured pixels: the figures' maps and curves, not only black text
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 60).mean() > 0.005


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, browser_spec):
    spec = browser_spec
    spec["targets"] = [{"select": "top", "count": 2, "token": "argmax"}, {"select": "top", "count": 1, "token": "cls"}]
    spec["attributors"].append({"name": "random"})
    spec["metrics"].append({"name": "cause_patches"})
    out = tmp_path_factory.mktemp("browser") / "run"
    cafe_core.run(spec, out, progress=False)
    index = cafe_core.report(out, max_targets=6, per_page=3, sanity_targets=1, random_directions=1, resamples=200,
                             device="cpu", progress=False)
    return index


@pytest.fixture(scope="module")
def browser_spec(assets):
    """The end-to-end spec (see conftest.py), built once for the module so one run serves every test here."""
    from conftest import e2e_spec

    return e2e_spec(assets)


@needs_chromium
def test_report_pages_load_without_errors_with_every_section_and_image(report_dir, tmp_path):
    browser = DevTools(tmp_path / "profile")
    try:
        events = browser.open(report_dir.as_uri())
        state = json.loads(browser.evaluate(PAGE_STATE))
        shot = browser.screenshot(tmp_path / "index.png")
        pages = sorted(report_dir.parent.glob("targets-*.html"))
        target_states = []
        for page in pages:
            events += browser.open(page.as_uri())
            target_states.append(json.loads(browser.evaluate(PAGE_STATE)))
        target_shot = browser.screenshot(tmp_path / "targets.png")
    finally:
        browser.close()
    assert problems_in(events) == []
    assert {"first", "summary", "differences", "locality", "sanity", "targets"} <= set(state["sections"])
    assert "beats" in state["text"] or "cannot be told apart" in state["text"] or "does worse" in state["text"]
    assert len(pages) == 2  # 6 targets drawn, 3 per page
    for page_state in [state, *target_states]:
        assert page_state["images"], "a page without figures"
        for src, complete, width, height in page_state["images"]:
            assert complete and width > 50 and height > 50, f"{src} did not load"
    assert any("the activation map has nothing to show" in s["text"] for s in target_states)  # the cls target
    assert_not_blank(shot)
    assert_not_blank(target_shot)


@needs_chromium
def test_a_missing_figure_and_a_script_error_are_caught(report_dir, tmp_path):
    broken = report_dir.parent / "broken.html"
    script = "<script>console.error('drawn wrong'); undefinedFunction();</script></body>"
    broken.write_text(report_dir.read_text().replace("figures/", "missing-figures/", 1).replace("</body>", script))
    browser = DevTools(tmp_path / "profile")
    try:
        events = browser.open(broken.as_uri())
        state = json.loads(browser.evaluate(PAGE_STATE))
    finally:
        browser.close()
        broken.unlink()
    assert any(not complete or width == 0 for _, complete, width, _ in state["images"])
    found = problems_in(events)
    assert any("failed load" in p or "log:" in p for p in found), found
    assert any("drawn wrong" in p for p in found) and any(p.startswith("exception") for p in found), found
