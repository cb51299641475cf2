"""A real ``edgegen serve`` process on a free loopback port, for the server's tests.

Importable as ``serve_support`` (pytest puts this folder on sys.path).  The server is started with
``--port 0``; the port is read from the line it prints once it listens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_MAIN = "import sys\nfrom edgegen.cli import main\nsys.argv[0] = 'edgegen'\nmain()\n"
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ServeProcess:
    """``edgegen serve ARGS`` in a subprocess; ``url`` once it listens, ``stop()`` sends Ctrl-C (SIGINT)."""

    def __init__(self, args: list[str], cwd: Path, timeout: float = 60.0) -> None:
        command = [sys.executable, "-c", _MAIN, "serve", *args, "--port", "0", "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._port: list[int] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self._port:
            self.proc.kill()
            raise RuntimeError("edgegen serve did not start:\n" + "".join(self.lines))
        self.url = f"http://127.0.0.1:{self._port[0]}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m and not self._port:
                self._port.append(int(m.group(1)))
                self._ready.set()
        self._ready.set()      # it ended without listening

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 20.0) -> int:
        """Ctrl-C, and the exit code (the process is killed if it does not end within ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("edgegen serve did not stop within %.0f s of Ctrl-C:\n%s"
                                     % (timeout, self.output())) from None
        time.sleep(0.05)      # the reader thread's last lines
        return self.proc.returncode
