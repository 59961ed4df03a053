"""Which node holds which data, and the seeded choice of clients for each round.

Runs with one seed train the same partitions in the same rounds (so a compare is like for like),
whatever node ids Flower gave the nodes: nodes are asked once which share of the data they hold
(a tiny query message, in the ledger), then sampled by that share. A node with a data folder of
its own takes the next free slot (in node-id order) instead of a partition of the common set.
In a Python simulation the engine's own node → partition table is handed in (``known``), so no
node is asked (1,000 nodes: 2,000 messages fewer before round 1); replies still name their
partition and are checked against it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedkron.protocol import read_info

log = logging.getLogger("fedkron")
QUERY_ROUND = "0"  # group id of the partition queries (the ledger's round 0)


class Roster:
    def __init__(
        self,
        num_partitions: int,
        seed: int,
        wait_for: int,
        min_live: int,
        poll: float = 1.0,
        on_answer=lambda msg, slot: None,
        known: Callable[[], dict[int, tuple[int, int]]] | None = None,
    ):
        """``known()``: node → (partition id, number of partitions) where the caller knows it."""
        self.num_partitions, self.seed, self.on_answer, self.known = num_partitions, seed, on_answer, known
        self.wait_for, self.min_live, self.poll = wait_for, min_live, poll
        self.partition_of: dict[int, int] = {}  # node → slot: its partition, or the slot of its own data
        self.own_data: set[int] = set()  # nodes that train on their own data folder (they report 0 of 1)
        self.shares: dict[int, int] = {}  # node → the number of partitions its share is one of
        self.refused: set[int] = set()  # nodes whose answer was bad: not asked again

    def reported(self, node: int) -> int:
        """The partition id the node's replies must carry."""
        return 0 if node in self.own_data else self.partition_of.get(node, -1)

    def sample(self, grid: Grid, server_round: int, fraction: float) -> list[int]:
        """Node ids of this round's clients, sorted by slot. Before the first round every expected
        node is waited for; later rounds go on with whoever is still connected (a node that died
        is not waited for), as long as ``min_live`` are."""
        return self.draw(grid, server_round, fraction)[0]

    def draw(self, grid: Grid, server_round: int, fraction: float, extra: float = 0.0) -> tuple[list[int], int]:
        """``sample``, and the k clients the round needs; with ``extra`` > 0, ceil(k·(1 + extra))
        are drawn (over-selection: the first k to finish are kept)."""
        self._wait(grid, self.wait_for if not self.partition_of else self.min_live)
        self.discover(grid)
        live = sorted(
            (n for n in grid.get_node_ids() if n in self.partition_of), key=lambda n: (self.partition_of[n], n)
        )
        k = min(max(1, int(round(len(live) * fraction))), len(live))
        n = min(len(live), math.ceil(k * (1 + extra) - 1e-9))
        rng = random.Random(self.seed * 100_003 + server_round)
        return sorted(rng.sample(live, n), key=lambda n: self.partition_of[n]), k

    def discover(self, grid: Grid) -> None:
        """Ask nodes not seen before which data they hold; a bad or missing answer leaves the node
        out (logged), two nodes claiming one partition keep the first."""
        unknown = sorted(n for n in grid.get_node_ids() if n not in self.partition_of and n not in self.refused)
        if unknown and self.known:
            unknown = self._take_known(unknown)
        if not unknown:
            return
        msgs = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, group_id=QUERY_ROUND) for n in unknown
        ]
        answers = {}
        for reply in grid.send_and_receive(msgs, timeout=600):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %s did not answer the partition query: %s", node, reply.error.reason)
                continue
            try:
                answers[node] = (reply, *read_info(reply))
            except Exception as err:  # whatever is wrong with it, it leaves this node out only
                log.warning("node %s: bad answer to the partition query, left out: %s", node, err)
                self.refused.add(node)
        taken = set(self.partition_of.values())
        for node in sorted(answers):  # node-id order: own-data slots do not depend on arrival order
            reply, pid, num = answers[node]
            if num == 1 and self.num_partitions > 1:
                free = [s for s in range(self.num_partitions) if s not in taken]
                if not free:
                    log.warning("node %s: no slot left for another node with its own data; left out", node)
                    self.refused.add(node)
                    continue
                pid = free[0]
                self.own_data.add(node)
            elif pid in taken:
                log.warning("node %s claims partition %d, which another node holds; left out", node, pid)
                self.refused.add(node)
                continue
            taken.add(pid)
            self.partition_of[node], self.shares[node] = pid, num
            self.on_answer(reply, pid)

    def _take_known(self, unknown: list[int]) -> list[int]:
        """Place the nodes whose partition of this run's set the caller knows; the others are asked."""
        known, taken = self.known(), set(self.partition_of.values())
        for node in unknown:
            pid, num = known.get(node, (-1, 0))
            if num == self.num_partitions and 0 <= pid < num and pid not in taken:
                self.partition_of[node], self.shares[node] = pid, num
                taken.add(pid)
        placed = len(unknown) - sum(n not in self.partition_of for n in unknown)
        if placed:
            log.info("partitions of %d nodes known from the simulation engine: not queried", placed)
        return [n for n in unknown if n not in self.partition_of]

    def _wait(self, grid: Grid, count: int) -> None:
        while len(list(grid.get_node_ids())) < count:
            log.info("waiting for nodes: %d connected, %d needed", len(list(grid.get_node_ids())), count)
            time.sleep(self.poll)
