"""Headless Chromium for the browser tests, over the DevTools protocol, with
the standard library only, and a static file server to show it pages.

Chromium runs with --remote-debugging-pipe: the protocol's JSON messages,
each ended by a NUL byte, go in on the child's fd 3 and come out on its fd 4
(what Playwright and Puppeteer use too), so no port, no websocket and no
pip package is needed.

    with Server(folder) as server, Browser() as browser:
        page = browser.new_page()
        page.goto(server.url + "index.html")  # waits for the load event
        page.evaluate("window.tfvaeReady.then(() => 1)")  # awaits promises
        page.screenshot(); page.errors  # exceptions, console.error, failed loads
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class CDPError(RuntimeError):
    pass


def find_chromium() -> str:
    for name in (
        os.environ.get("CHROMIUM"),
        "chromium",
        "chromium-browser",
        "chromium-headless-shell",
        "google-chrome",
    ):
        if name and (path := shutil.which(name)):
            return path
    raise FileNotFoundError("no chromium: apt-get install -y chromium (or set CHROMIUM)")


class Browser:
    def __init__(
        self,
        executable: str | None = None,
        args: tuple[str, ...] = (),
        timeout: float = 30.0,
        window: tuple[int, int] = (800, 600),
    ):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cdp-profile-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds():  # in the child: our pipes become fds 3 (commands) and 4 (replies)
            # Move both ends above 4 first, so one dup2 cannot overwrite the other.
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)  # dup2 leaves 3 and 4 inheritable; the rest close on exec
            os.dup2(high_w, 4)

        cmd = [
            executable or find_chromium(),
            "--headless",
            "--no-sandbox",  # root in a container: no setuid sandbox
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            f"--window-size={window[0]},{window[1]}",
            *args,
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=wire_fds,
            # Not close_fds: it would run after wire_fds and close 3 and 4. Python's
            # own fds are non-inheritable (PEP 446), so nothing else leaks.
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, queue.Queue] = {}
        self._listeners: list = []
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.version = self.send("Browser.getVersion")

    # --- protocol plumbing
    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.decode(errors="replace").rstrip()])[-50:]

    def _read(self):
        buf = b""
        with os.fdopen(self._from_child, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        q = self._waiting.pop(msg["id"], None)
                        if q:
                            q.put(msg)
                    else:
                        for listener in list(self._listeners):
                            listener(msg)
        for q in list(self._waiting.values()):  # browser gone: wake every waiter
            q.put({"error": {"message": "browser closed the pipe"}})

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            q = self._waiting[msg_id] = queue.Queue()
            msg = {"id": msg_id, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout or self.timeout)
        except queue.Empty:
            self._waiting.pop(msg_id, None)
            raise TimeoutError(f"{method}: no reply in {timeout or self.timeout}s") from None
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Page(self, session["sessionId"])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except (CDPError, TimeoutError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self._to_child)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session
        self.errors: list[str] = []  # page exceptions, console.error, error log entries
        self.console: list[str] = []  # every console message, "type: text"
        self._loaded = threading.Event()
        browser._listeners.append(self._on_event)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method, params=None, timeout=None):
        return self.browser.send(method, params, self.session, timeout)

    def _on_event(self, msg):
        if msg.get("sessionId") != self.session:
            return
        method, p = msg["method"], msg.get("params", {})
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            self.console.append(f"{p['type']}: {text}")
            if p["type"] in ("error", "assert"):
                self.errors.append(f"console.{p['type']}: {text}")
        elif method == "Log.entryAdded":
            e = p["entry"]
            self.console.append(f"log.{e['level']}: {e['text']} {e.get('url', '')}".rstrip())
            if e["level"] == "error":
                self.errors.append(f"log: {e['text']} {e.get('url', '')}".rstrip())

    def goto(self, url: str, timeout: float | None = None):
        """Navigate and wait for the load event (module scripts have run by then)."""
        self._loaded.clear()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")
        if not self._loaded.wait(timeout or self.browser.timeout):
            raise TimeoutError(f"{url}: no load event")

    def evaluate(self, expression: str, timeout: float | None = None):
        """Value of a JS expression (promises awaited, result passed as JSON)."""
        r = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout,
        )
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(d.get("exception", {}).get("description") or d.get("text"))
        return r["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])


class _Handler(SimpleHTTPRequestHandler):
    extra_headers: dict[str, str] = {}

    def end_headers(self):
        for k, v in self.extra_headers.items():
            self.send_header(k, v)
        super().end_headers()

    def log_message(self, fmt, *args):  # quiet
        pass


class Server:
    def __init__(self, directory: str, headers: dict[str, str] | None = None):
        handler = type("Handler", (_Handler,), {"extra_headers": headers or {}})
        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
