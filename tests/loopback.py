"""An in-process Flower Grid for tests: messages go straight to ClientApp handlers in this process.

It does what a real Grid does for a strategy (node ids, message ids, replies that point back at
their request), minus Ray and the network, so the server side can be tested in seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

Handler = Callable[[Message, Context], Message]


class LoopbackGrid(Grid):
    def __init__(
        self,
        num_nodes: int,
        handler: Handler,
        node_config: Callable[[int], dict] | None = None,
        first_node_id: int = 1001,
    ):
        """``num_nodes`` nodes (node id ``first_node_id + i`` holds partition ``i`` of ``num_nodes``
        unless ``node_config(i)`` says otherwise) that answer every message with ``handler``."""
        self.handler = handler
        self.contexts: dict[int, Context] = {}
        for i in range(num_nodes):
            cfg = node_config(i) if node_config else {"partition-id": i, "num-partitions": num_nodes}
            self.contexts[first_node_id + i] = Context(
                run_id=1, node_id=first_node_id + i, node_config=cfg, state=RecordDict(), run_config={}
            )
        self.sent: list[Message] = []
        self.dead: set[int] = set()  # nodes that never reply

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver at once; the replies wait for ``pull_messages``."""
        self._waiting = getattr(self, "_waiting", {})
        ids = []
        for reply in self._answer(messages):
            self._waiting[reply.metadata.reply_to_message_id] = reply
        for msg in self.sent[-len(list(messages)) if messages else 0 :]:
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._waiting.pop(i) for i in list(message_ids) if i in self._waiting]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self._answer(messages)

    def _answer(self, messages: Iterable[Message]) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.dead:
                continue
            try:
                reply = self.handler(msg, self.contexts[node])
            except Exception as err:  # what Flower sends back when a ClientApp raises
                from flwr.app.error import Error

                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            replies.append(reply)
        return replies
