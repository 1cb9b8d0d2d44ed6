"""A real Redis Cluster (3 primaries + 3 replicas) from Debian's redis-server on free loopback ports.

`redis-cli --cluster create` assigns the slots and the replicas; every node is a `RedisServer` (its
own port and data dir, so a killed node restarts where it was and rejoins as a replica).
"""

from __future__ import annotations

import shutil
import subprocess
import time

import redis
from redis.crc import key_slot

from bench.procs import cluster_port
from tests.support.redis_server import RedisServer

NODE_TIMEOUT_MS = 1000  # failure detection: a killed primary is replaced in about 2-3 s


def cluster_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = cluster_port()
        if port not in ports:
            ports.append(port)
    return ports


class RedisClusterNodes:
    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-server; .ci/run does it)")
        self.cli = cli
        self.replicas_per_primary = replicas_per_primary
        self.servers = [
            RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
                        "--repl-diskless-sync-delay", "0",
                        port=port)
            for port in cluster_ports(primaries * (1 + replicas_per_primary))
        ]

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{server.port}" for server in self.servers]

    def start(self) -> RedisClusterNodes:
        try:
            for server in self.servers:
                server.start()
            subprocess.run(
                [self.cli, "--cluster", "create", *self.seeds, "--cluster-replicas", str(self.replicas_per_primary),
                 "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=2)

    def wait_healthy(self, timeout: float = 20) -> None:
        """Until every running node says cluster_state:ok and sees the same slot map with live primaries."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._healthy():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become healthy")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        maps = set()
        replicas = 0
        for server in self.running():
            with self.client(server) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave":
                    if replication["master_link_status"] != "up":
                        return False
                    replicas += 1
                maps.add(tuple(sorted((start, end, port) for start, end, (_, port, *_), *_ in
                                      client.execute_command("CLUSTER", "SLOTS"))))
        if len(maps) != 1:
            return False
        slot_map = next(iter(maps))
        primaries = {port for *_, port in slot_map}
        alive = {server.port for server in self.running()}
        # Every node serves slots or replicates one that does (a restarted primary has become a replica).
        if not (primaries <= alive and replicas == len(alive) - len(primaries)):
            return False
        # A replica fresh from a diskless full sync gets the stream only after its first ACK (up to
        # 1 s later): a write acknowledged by the primary's replicas shows that replication runs.
        expected = replicas // len(primaries)
        for start, end, port in slot_map:
            key = next(f"fixture:probe:{n}" for n in range(100_000) if start <= key_slot(f"fixture:probe:{n}".encode()) <= end)
            with redis.Redis(port=port, socket_timeout=3) as primary:
                primary.set(key, "1")
                if expected and int(primary.wait(expected, 2000)) < expected:
                    return False
        return True

    def running(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def primary_for(self, key: str) -> RedisServer:
        """The node that serves `key`'s slot now."""
        with self.client(self.running()[0]) as client:
            slot = client.cluster("keyslot", key)
            for start, end, (_, port, *_), *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
