"""A real headless Chromium for tests, driven over the DevTools protocol through a pipe (no extra package).

Chromium started with --remote-debugging-pipe reads protocol commands from its file descriptor 3 and writes
answers and events to descriptor 4, each message JSON ended by a NUL byte. open_page() loads a page in a new tab
and keeps every event, so that a test can ask what the page logged, threw or tried to load from the network.
Chromium comes from the Debian packages (apt-get install chromium); find_chromium() says where it is.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# what keeps a headless browser from reaching anything by itself (updates, sync, safe-browsing lists, ...)
QUIET_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
               "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def install_chromium() -> str | None:
    """Install Chromium from the Debian packages when this machine may (root with apt-get); its path, or None."""
    if find_chromium() or os.geteuid() != 0 or not shutil.which("apt-get"):
        return find_chromium()
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if subprocess.run(command, env=environment, capture_output=True, timeout=900).returncode != 0:
            return None
    return find_chromium()


def require_chromium() -> str:
    """Chromium's path, installed first when missing; a test is skipped, with the reason, only when it can be
    neither found nor installed, and in CI (CI=true, as .ci/run sets, which installs it) it fails instead."""
    import pytest

    executable = find_chromium() or install_chromium()
    if executable is None:
        reason = "Chromium is not installed and cannot be installed here (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return executable


class BrowserError(Exception):
    pass


class Browser:
    """One headless Chromium process with a DevTools pipe."""

    def __init__(self, executable: str, profile: Path, window: tuple[int, int] = (1280, 1600)) -> None:
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()

        def on_fds_3_and_4():
            # copies first: either end may already be 3 or 4, and dup2 onto itself would keep close-on-exec
            commands, answers = os.dup(commands_read), os.dup(answers_write)
            os.dup2(commands, 3)
            os.dup2(answers, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.log_file = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [executable, *QUIET_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
             "--remote-debugging-pipe", "--enable-logging=stderr", "--v=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            # os.pipe's descriptors close on exec; dup2 makes 3 and 4 inheritable, and close_fds=False keeps them
            # (it would close them after preexec_fn ran)
            close_fds=False, preexec_fn=on_fds_3_and_4)
        os.close(commands_read)
        os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def log(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"Chromium did not answer in time; its log:\n{self.log()[-3000:]}")
            ready, _, _ = select.select([self._answers], [], [], remaining)
            if ready:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the pipe; its log:\n{self.log()[-3000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        """Send a command and wait for its answer; events that arrive meanwhile are kept in self.events."""
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == method and message.get("sessionId") == session:
                return message

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.process.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log_file.close()


class Page:
    """A loaded page: what it logged and requested, a script's value in it, and a screenshot."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def _events(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events
                if e.get("method") == method and e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Everything the page reported as going wrong: uncaught exceptions, console and log errors (a blocked
        load or a Content-Security-Policy violation is one), failed loads."""
        found = [f"exception: {e['exceptionDetails'].get('text')}" for e in self._events("Runtime.exceptionThrown")]
        found += [f"console.{e['type']}: {e.get('args')}" for e in self._events("Runtime.consoleAPICalled")
                  if e["type"] in ("error", "assert")]
        found += [f"log {e['entry']['source']}: {e['entry']['text']}" for e in self._events("Log.entryAdded")
                  if e["entry"]["level"] == "error"]
        found += [f"load failed: {e.get('errorText')}" for e in self._events("Network.loadingFailed")]
        return found

    def requested_urls(self) -> list[str]:
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    def evaluate(self, expression: str):
        answer = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self) -> bytes:
        answer = self.browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                   self.session)
        return base64.b64decode(answer["data"])


def open_page(browser: Browser, url: str, timeout: float = 60) -> Page:
    """Open url in a new tab with the page, runtime, log and network domains watched, and wait for its load."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", {}, session)
    browser.call("Page.navigate", {"url": url}, session)
    browser.wait_for("Page.loadEventFired", session, timeout)
    return Page(browser, session)


def screenshot_file(executable: str, url: str, png: Path, profile: Path, window: tuple[int, int] = (1280, 1600),
                    timeout: float = 120) -> subprocess.CompletedProcess:
    """Chromium's own one-shot screenshot (--screenshot): the way a person would check a page from a shell."""
    return subprocess.run([executable, *QUIET_FLAGS, f"--user-data-dir={profile}",
                           f"--window-size={window[0]},{window[1]}", f"--screenshot={png}", url],
                          capture_output=True, text=True, timeout=timeout)
