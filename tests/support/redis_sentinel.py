"""A real Sentinel deployment: a primary, a replica and 3 sentinels (Debian's redis-server and
redis-sentinel) on free loopback ports. Every process is stopped by `stop()`."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
FAST_SYNC = ("--repl-diskless-sync-delay", "0")  # a replica syncs at once, not after 5 s  # a killed primary is replaced in about 2-4 s


class RedisSentinels:
    def __init__(self, sentinels: int = 3) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError("redis-sentinel is not installed (apt-get install redis-sentinel; .ci/run does it)")
        self.binary = binary
        self.primary = RedisServer(*FAST_SYNC)
        self.replica = RedisServer(*FAST_SYNC)
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="bg-sentinel-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def start(self) -> RedisSentinels:
        try:
            self.primary.start()
            self.replica.extra += ["--replicaof", "127.0.0.1", str(self.primary.port)]
            self.replica.start()
            # Each sentinel is told the others and the replica up front (else hello messages take seconds).
            ids = {port: secrets.token_hex(20) for port in self.sentinel_ports}
            for port in self.sentinel_ports:
                conf = self.dir / f"sentinel-{port}.conf"  # sentinel rewrites its own file: one each
                known = "".join(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[other]}\n"
                                for other in self.sentinel_ports if other != port)
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\nsentinel myid {ids[port]}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                    f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}\n{known}"
                )
                self.processes.append(subprocess.Popen([self.binary, str(conf)],
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until every sentinel knows the others and a replica in sync with the primary it names."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not agree on a primary with a replica")
            time.sleep(0.1)

    def _ready(self) -> bool:
        primaries = set()
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1) as sentinel:
                info = sentinel.sentinel_master(SERVICE)
                if info["flags"] != "master" or info["num-other-sentinels"] != len(self.sentinel_ports) - 1:
                    return False
                if info["num-slaves"] < 1:
                    return False
                primaries.add(int(info["port"]))
        if len(primaries) != 1:
            return False
        with redis.Redis(port=primaries.pop(), socket_timeout=3) as primary:
            # A replica fresh from a diskless full sync gets the stream only after its first ACK (up
            # to 1 s later): a write it acknowledges shows that replication runs.
            primary.set("fixture:probe", "1")
            return primary.info("replication")["role"] == "master" and int(primary.wait(1, 2000)) >= 1

    def current_primary(self) -> RedisServer:
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=1) as sentinel:
            _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return next(server for server in self.servers if server.port == int(port))

    def restart_as_replica(self, server: RedisServer) -> None:
        """Start a killed server again as a replica of the current primary, then wait for agreement."""
        primary = self.current_primary()
        assert primary is not server
        server.extra = [*FAST_SYNC, "--appendonly", "no", "--replicaof", "127.0.0.1", str(primary.port)]
        server.start()
        self.wait_ready()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
