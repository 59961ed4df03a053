"""Which node holds which data, and the seeded choice of clients for each round.

Runs with one seed train the same partitions in the same rounds (so a compare is like for like),
whatever node ids Flower gave the nodes: nodes are asked once which share of the data they hold
(a tiny query message, in the ledger), then sampled by that share. A node with a data folder of
its own takes the next free slot (in node-id order) instead of a partition of the common set.
"""

from __future__ import annotations

import logging
import random
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedkron.protocol import RejectedReply, read_info

log = logging.getLogger("fedkron")
QUERY_ROUND = "0"  # group id of the partition queries (the ledger's round 0)


class Roster:
    def __init__(self, num_partitions: int, seed: int, wait_for: int, min_live: int, poll: float = 1.0,
                 on_answer=lambda msg, slot: None):
        self.num_partitions, self.seed, self.on_answer = num_partitions, seed, on_answer
        self.wait_for, self.min_live, self.poll = wait_for, min_live, poll
        self.partition_of: dict[int, int] = {}  # node → slot: its partition, or the slot of its own data
        self.own_data: set[int] = set()  # nodes that train on their own data folder (they report 0 of 1)
        self.refused: set[int] = set()  # nodes whose answer was bad: not asked again

    def reported(self, node: int) -> int:
        """The partition id the node's replies must carry."""
        return 0 if node in self.own_data else self.partition_of.get(node, -1)

    def sample(self, grid: Grid, server_round: int, fraction: float) -> list[int]:
        """Node ids of this round's clients, sorted by slot. Before the first round every expected
        node is waited for; later rounds go on with whoever is still connected (a node that died
        is not waited for), as long as ``min_live`` are."""
        self._wait(grid, self.wait_for if not self.partition_of else self.min_live)
        self.discover(grid)
        live = sorted((n for n in grid.get_node_ids() if n in self.partition_of),
                      key=lambda n: (self.partition_of[n], n))
        k = max(1, int(round(len(live) * fraction)))
        rng = random.Random(self.seed * 100_003 + server_round)
        return sorted(rng.sample(live, min(k, len(live))), key=lambda n: self.partition_of[n])

    def discover(self, grid: Grid) -> None:
        """Ask nodes not seen before which data they hold; a bad or missing answer leaves the node
        out (logged), two nodes claiming one partition keep the first."""
        unknown = sorted(n for n in grid.get_node_ids() if n not in self.partition_of and n not in self.refused)
        if not unknown:
            return
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, group_id=QUERY_ROUND)
                for n in unknown]
        answers = {}
        for reply in grid.send_and_receive(msgs, timeout=600):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %s did not answer the partition query: %s", node, reply.error.reason)
                continue
            try:
                answers[node] = (reply, *read_info(reply, self.num_partitions))
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
            self.partition_of[node] = pid
            self.on_answer(reply, pid)

    def _wait(self, grid: Grid, count: int) -> None:
        while len(list(grid.get_node_ids())) < count:
            log.info("waiting for nodes: %d connected, %d needed", len(list(grid.get_node_ids())), count)
            time.sleep(self.poll)
