"""Terminal: a container's shell in the notebook, over the streaming server.

Exec and Attach answer a URL; whoever dials it speaks the Kubernetes channel
protocol (``v4.channel.k8s.io``) over a websocket. Here the *kernel* dials it,
with the websockets library, exactly as kubectl would, and relays:

    keystrokes in the page ──widget msg──▶ kernel ──channel 0──▶ the process's tty
    the tty's output ◀──widget msg── kernel ◀──channel 1── (stdout; a tty has no stderr)
    the widget's size ──widget msg──▶ kernel ──channel 4 {"Width","Height"}──▶ TIOCSWINSZ

The page draws with xterm.js (vendored under ``static/xterm``: a real terminal
emulator, so ANSI colours, cursor movement, busybox ``top`` and ``vi`` work).
The kernel keeps the last output too, so a view opened late replays it and
``text()`` serves nbclient, the book and tests, where no page runs.

Closing the terminal (``close()``, a kernel that ends) closes the websocket; the
streaming server then ends the session and the shim kills an exec's process.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import traitlets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from .base import LiveWidget

STATIC = Path(__file__).parent / "static"
V4 = Subprotocol("v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
SCROLLBACK = 256 * 1024
_ANSI = re.compile(
    r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMc])"
)


def _vendored(name: str) -> str:
    """An xterm.js file as shipped, less its source-map comment (the map is not
    shipped, and a page would ask for it)."""
    text = (STATIC / "xterm" / name).read_text()
    return re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", text)


def frames(
    url: str, send: Sequence[bytes] = (), protocol: str = "v4.channel.k8s.io"
) -> list[tuple[int, bytes]]:
    """One whole session with the streaming server, as (channel, payload) frames:
    what a client of ``url`` receives after sending ``send``."""
    got = []
    address = "ws://" + url.removeprefix("http://")
    with ws_connect(address, subprotocols=[Subprotocol(protocol)], open_timeout=10) as ws:
        for message in send:
            ws.send(message)
        for received in ws:
            data = received if isinstance(received, bytes) else received.encode()
            got.append((data[0] if data else -1, data[1:]))
    return got


def plain(text: str) -> str:
    """Terminal output as plain text: escape sequences out, \\r\\n as \\n."""
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


class Terminal(LiveWidget):
    """A tty session with a container: ``Terminal(url)`` for an Exec or Attach
    URL asked with ``tty=True, stdin=True, stdout=True``."""

    _esm = STATIC / "terminal.js"
    _css = STATIC / "terminal.css"
    xterm_js = traitlets.Unicode("").tag(sync=True)
    fit_js = traitlets.Unicode("").tag(sync=True)
    xterm_css = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("connecting").tag(sync=True)
    cols = traitlets.Int(80).tag(sync=True)
    rows = traitlets.Int(24).tag(sync=True)

    def __init__(self, url: str, *, title: str = "") -> None:
        super().__init__(
            xterm_js=_vendored("xterm.mjs"),
            fit_js=_vendored("addon-fit.mjs"),
            xterm_css=(STATIC / "xterm" / "xterm.css").read_text(),
        )
        self.title = title
        self._out = bytearray()  # the last SCROLLBACK bytes of output
        self._total = 0  # bytes of output so far
        self._lock = threading.Condition()
        self.exit_status: dict[str, Any] | None = None
        self.on_msg(self._from_page)
        address = "ws://" + url.removeprefix("http://") if url.startswith("http://") else url
        try:
            self._ws: ClientConnection | None = ws_connect(
                address, subprotocols=[V4], open_timeout=10, max_size=None
            )
        except InvalidStatus as exc:
            self._ws = None
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            self.status = f"refused: HTTP {exc.response.status_code} {body}".strip()
            raise ConnectionError(f"the streaming server {self.status} ({url})") from None
        # The session outlives this call, so no ``with`` block can hold it;
        # entering it says its lifetime is managed (websockets >= 17.1 warns
        # otherwise): the relay thread closes it when the session ends.
        self._ws.__enter__()
        self.status = "open"
        self._reader = threading.Thread(target=self._relay, name="terminal-relay", daemon=True)
        self._reader.start()
        # A tty starts 0×0, which full-screen programs cannot draw in; kubectl
        # too sends its size first. The page sends the real size when it draws.
        self.resize(self.cols, self.rows)

    # -- the container to the page -----------------------------------------------

    def _relay(self) -> None:
        assert self._ws is not None
        try:
            for message in self._ws:
                data = message if isinstance(message, bytes) else message.encode()
                channel, payload = data[:1], data[1:]
                if channel in (bytes([STDOUT]), bytes([STDERR])) and payload:
                    self._output(payload)
                elif channel == bytes([ERROR]) and payload:
                    self._finished(payload)
            self._closed("the session ended")
        except ConnectionClosed as exc:
            self._closed(f"connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})")
        except OSError as exc:
            self._closed(f"connection lost: {exc}")
        finally:
            self._ws.close()

    def _output(self, payload: bytes) -> None:
        with self._lock:
            start = self._total
            self._total += len(payload)
            self._out += payload
            del self._out[:-SCROLLBACK]
            self._lock.notify_all()
        # ``start`` is the payload's offset in the whole output: a view that got
        # the same bytes by a replay as well draws them once.
        self.send({"type": "out", "start": start}, [payload])

    def _finished(self, payload: bytes) -> None:
        try:
            self.exit_status = json.loads(payload)
        except ValueError:
            self.exit_status = {"status": "Failure", "message": payload.decode(errors="replace")}

    def _closed(self, why: str) -> None:
        status = self.exit_status or {}
        if status.get("status") == "Success":
            why = "exited 0"
        elif status:
            causes = status.get("details", {}).get("causes", [])
            code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), "")
            why = f"exited {code}" if code else str(status.get("message", why))
        with self._lock:
            self.status = f"closed: {why}"
            self._lock.notify_all()

    # -- the page to the container ---------------------------------------------------

    def _from_page(self, _widget: Any, content: dict[str, Any], _buffers: Sequence[bytes]) -> None:
        kind = content.get("type")
        if kind == "in":
            self.send_input(str(content.get("data", "")))
        elif kind == "resize":
            self.resize(int(content.get("cols", 0)), int(content.get("rows", 0)))
        elif kind == "hello":  # a view just opened: show it what came before
            with self._lock:
                replay, start = bytes(self._out), self._total - len(self._out)
            if replay:
                self.send({"type": "out", "start": start}, [replay])

    def send_input(self, text: str | bytes) -> None:
        """Keystrokes (or a whole line) to the process's stdin."""
        data = text.encode() if isinstance(text, str) else text
        self._to_container(bytes([STDIN]) + data)

    def resize(self, cols: int, rows: int) -> None:
        """The tty's size; the page sends it whenever the widget changes size."""
        if not (0 < cols <= 1000 and 0 < rows <= 1000):
            return  # a hidden view measures 0×0; the tty keeps its size
        self.cols, self.rows = cols, rows
        self._to_container(bytes([RESIZE]) + json.dumps({"Width": cols, "Height": rows}).encode())

    def _to_container(self, message: bytes) -> None:
        if self._ws is None or not self.status.startswith("open"):
            raise ConnectionError(f"the terminal is {self.status}")
        try:
            self._ws.send(message)
        except ConnectionClosed:
            self._closed("connection closed while sending")
            raise ConnectionError(f"the terminal is {self.status}") from None

    # -- for code and for pages without widgets -----------------------------------------

    def text(self) -> str:
        with self._lock:
            return plain(self._out.decode(errors="replace"))

    def wait_for(self, needle: str, timeout: float = 10.0) -> bool:
        """Wait until ``needle`` appears in the output (or the session ends)."""
        with self._lock:
            return self._lock.wait_for(
                lambda: (
                    needle in plain(self._out.decode(errors="replace"))
                    or not self.status.startswith("open")
                ),
                timeout,
            ) and needle in plain(self._out.decode(errors="replace"))

    def wait_closed(self, timeout: float = 10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self.status.startswith("open"), timeout)

    def disconnect(self) -> None:
        """End the session (an exec's process is killed); the widget stays on the page."""
        if getattr(self, "_ws", None) is not None:
            self._ws.close()  # type: ignore[union-attr]
            self._reader.join(timeout=5)
            if self.status.startswith("open"):
                self._closed("closed by the notebook")

    def close(self) -> None:
        """End the session and remove the widget (ipywidgets' close)."""
        self.disconnect()
        super().close()

    def fallback(self) -> dict[str, str]:
        head = f"[terminal {self.title} — {self.status}]".replace("  ", " ")
        return {"text/plain": head + "\n" + self.text()}
