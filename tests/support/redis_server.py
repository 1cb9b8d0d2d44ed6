"""A real redis-server process on a free loopback port (no fakes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, *extra: str, appendonly: bool = False, port: int | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (CA, server certificate, server key) files: TLS only on `port`, client certificates required."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="bg-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        # appendonly: every write fsynced, so a killed and restarted server still knows every jti.
        self.extra = [*extra, *(["--appendonly", "yes", "--appendfsync", "always"] if appendonly else
                                ["--appendonly", "no"])]
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            ca, cert, key = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-ca-cert-file", str(ca),
                      "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "yes"]
        self.process = subprocess.Popen(
            [self.binary, *listen, "--bind", "127.0.0.1", "--save", "",
             "--dir", self.dir, "--protected-mode", "yes", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if self.tls is not None:  # the handshake proves it listens; no client certificate: refused after
                        context = ssl.create_default_context(cafile=str(self.tls[0]))
                        with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                            return self
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        """Freeze the server: connections stay open but nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the process is gone at once, as in a crash (the port and the data dir stay)."""
        assert self.process is not None
        self.resume()
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
