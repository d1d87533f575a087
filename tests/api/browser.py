"""A headless Debian chromium driven over the DevTools protocol (a WebSocket, through aiohttp).

`Browser.start(tmp)` launches chromium with a fresh profile and opens one page; `page.goto(url)`,
`page.evaluate(js)`, `page.screenshot()`. HTTP Basic challenges are answered with the credentials
given to `goto`, the way a person answers the browser's prompt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import pathlib
import shutil
from typing import Any

import aiohttp
import pytest

CHROMIUM = os.environ.get("ROTOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--remote-debugging-port=0",
)


def chromium_or_skip() -> str:
    """The chromium binary; the test skips without it (Debian package `chromium`), and fails in CI."""
    if pathlib.Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"needs a headless browser: install the Debian package chromium (no {CHROMIUM})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One chromium process and a DevTools session on one page."""

    def __init__(self, process: asyncio.subprocess.Process, ws: Any, session: aiohttp.ClientSession) -> None:
        self._process, self._ws, self._http = process, ws, session
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._session_id = ""
        self._credentials: tuple[str, str] | None = None
        self.auth_challenges = 0
        self._replies: set[asyncio.Task[None]] = set()  # answers to paused requests, under way
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, profile: pathlib.Path) -> Browser:
        binary = chromium_or_skip()
        await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        try:
            async with asyncio.timeout(60):  # a cold start on a busy machine
                while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                    if process.returncode is not None:
                        raise AssertionError(f"chromium exited with {process.returncode} at start")
                    await asyncio.sleep(0.1)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        port, path = port_file.read_text().splitlines()[:2]
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        browser = cls(process, ws, http)
        target = await browser.send("Target.createTarget", url="about:blank")
        attached = await browser.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        browser._session_id = attached["sessionId"]
        for domain in ("Page", "Runtime"):
            await browser.send(f"{domain}.enable")
        # every request pauses here first, so that Basic challenges reach us (Fetch.authRequired)
        await browser.send("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])
        return browser

    async def send(self, method: str, *, to_browser: bool = False, **params: Any) -> dict[str, Any]:
        """A DevTools command on the page (on the browser itself `to_browser`, or before a page is attached)."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if self._session_id and not to_browser:
            message["sessionId"] = self._session_id
        done = asyncio.get_running_loop().create_future()
        self._waiting[message["id"]] = done
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(done, 30)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if "id" in message:
                waiter = self._waiting.pop(message["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
            elif message.get("method") == "Fetch.requestPaused":
                self._reply("Fetch.continueRequest", requestId=message["params"]["requestId"])
            elif message.get("method") == "Fetch.authRequired":
                self.auth_challenges += 1
                answer: dict[str, Any] = {"response": "CancelAuth"}
                if self._credentials is not None:
                    user, password = self._credentials
                    answer = {"response": "ProvideCredentials", "username": user, "password": password}
                request_id = message["params"]["requestId"]
                self._reply("Fetch.continueWithAuth", requestId=request_id, authChallengeResponse=answer)

    def _reply(self, method: str, **params: Any) -> None:
        task = asyncio.create_task(self._quiet(method, **params))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _quiet(self, method: str, **params: Any) -> None:
        with contextlib.suppress(AssertionError, asyncio.TimeoutError, ConnectionError):
            await self.send(method, **params)

    async def goto(self, url: str, credentials: tuple[str, str] | None = None) -> None:
        """Load `url`, answering a Basic challenge with `credentials`; returns once it has loaded."""
        self._credentials = credentials
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def until(self, expression: str, within: float = 20.0) -> Any:
        """Evaluate `expression` until it is truthy; its value. Fails the test after `within` seconds."""
        last = None
        try:
            async with asyncio.timeout(within):
                while True:
                    last = await self.evaluate(expression)
                    if last:
                        return last
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"the page never satisfied {expression!r} (last: {last!r})") from None

    async def screenshot(self, path: pathlib.Path) -> None:
        """A PNG of the whole page."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close", to_browser=True)
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()
        await self._http.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
