"""The web page's script against a live server: in a real headless Chromium (Debian's package; never downloaded
here), driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no WebDriver, no websocket
library): type a message, see the streamed reply, save a screenshot; skipped where /usr/bin/chromium is missing,
except under CI (CI=true, where .ci/run installs it): there a missing browser fails.
And in Node with a minimal fake DOM (page_harness.js), where Node is installed: the same script's requests and
SSE parsing, with the reply arriving in several pieces."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import edgegen

CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")
APP_JS = Path(edgegen.__file__).parent / "serve" / "static" / "app.js"
pytest.importorskip("fastapi")

from edgegen import GenerationSettings  # noqa: E402
from serve_support import ServeProcess  # noqa: E402


class DevTools:
    """Chromium's DevTools protocol over its pipe: NUL-terminated JSON messages on fds 3 (in) and 4 (out)."""

    def __init__(self, user_dir: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends as fds 3 and 4, where Chromium wants them: moved out of the way first (>= 10), then
        # redirected by bash (dash takes one-digit fds only) that execs the browser (a preexec_fn dup2 would not do:
        # subprocess closes every fd but pass_fds after it)
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
        os.close(to_child_r)
        os.close(from_child_w)
        to_child_r, from_child_w = child
        self.proc = subprocess.Popen(["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} '
                                      f'{to_child_r}<&- {from_child_w}>&-',
                                      str(CHROMIUM), "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                                      "--disable-gpu", "--no-first-run", f"--user-data-dir={user_dir}",
                                      "--window-size=1000,800", "about:blank"],
                                     pass_fds=(to_child_r, from_child_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer, self._id = b"", 0

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    assert "error" not in reply, reply
                    return reply["result"]
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                break
            self._buffer += chunk
        raise AssertionError(f"Chromium did not answer {method}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def greedy_reply(artifact: Path, text: str) -> str:
    lm = edgegen.load(artifact, provider="cpu")
    return lm.chat([{"role": "user", "content": text}], GenerationSettings(temperature=0, max_new_tokens=12)).content


@pytest.mark.skipif(NODE is None, reason="no node on this machine")
def test_the_pages_script_streams_a_reply_in_node(chat_lm_artifact, tmp_path):
    server = ServeProcess([f"chat={chat_lm_artifact}", "--provider", "cpu", "--threads", "1"], cwd=tmp_path)
    try:
        run = subprocess.run([NODE, str(Path(__file__).parent / "page_harness.js"), str(APP_JS), server.url,
                              "Hello from the page"], capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout.strip().splitlines()[-1])
    assert shown.get("models") == ["chat"] and not shown["error"], shown
    assert shown["text"] == greedy_reply(chat_lm_artifact, "Hello from the page")
    assert shown["updates"] > 1 and "tokens" in shown["meta"] and "first token" in shown["meta"], shown


def test_typing_a_message_streams_the_reply_into_the_page(chat_lm_artifact, tmp_path):
    if not CHROMIUM.exists():
        missing = "no /usr/bin/chromium: install Debian's chromium package (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}; .ci/run installs it where apt-get is available")
        pytest.skip(missing)
    server = ServeProcess([f"chat={chat_lm_artifact}", "--provider", "cpu", "--threads", "1"], cwd=tmp_path)
    browser = DevTools(tmp_path / "chromium")
    try:
        target = browser.call("Target.createTarget", url=server.url + "/")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

        def js(expression: str):
            return browser.call("Runtime.evaluate", session, expression=expression,
                                returnByValue=True)["result"].get("value")

        def until(expression: str, timeout: float = 30.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                value = js(expression)
                if value:
                    return value
                time.sleep(0.05)
            raise AssertionError(f"the page never got to: {expression}")

        until("document.querySelectorAll('#model option').length > 0")
        # every text the reply's bubble is given, as it is given (the text nodes its updates add)
        js("window.seen = []; new MutationObserver((records) => { for (const r of records) for (const n of "
           "r.addedNodes) if (n.nodeType === 3 && r.target.classList.contains('assistant')) "
           "window.seen.push(n.textContent) }).observe(document.body, {subtree: true, childList: true}); true")
        js("document.getElementById('temperature').value = '0'; document.getElementById('max-tokens').value = '12';"
           "document.getElementById('input').value = 'Hello from the browser';"
           "document.getElementById('chat-form').requestSubmit(); true")
        until("document.querySelector('.msg.assistant.done') !== null")
        shown = js("document.querySelector('.msg.assistant').firstChild.textContent")
        meta = js("document.querySelector('.msg.assistant .meta').textContent")
        seen = js("window.seen")
        png = base64.b64decode(browser.call("Page.captureScreenshot", session, format="png")["data"])
        (tmp_path / "page.png").write_bytes(png)
        shot = os.environ.get("EDGEGEN_PAGE_SCREENSHOT")      # where to keep a copy (a CI artifact)
        if shot:
            Path(shot).write_bytes(png)
    finally:
        browser.close()
        server.stop()
    assert shown == greedy_reply(chat_lm_artifact, "Hello from the browser") and "tokens" in meta
    assert "first token" in meta
    # streamed: the bubble grew piece by piece, each text extending the last, ending at the reply
    assert len(seen) > 2 and seen[-1] == shown and all(b.startswith(a) for a, b in zip(seen, seen[1:])), seen
    assert png.startswith(b"\x89PNG") and len(png) > 1000
