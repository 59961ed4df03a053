"""The communication ledger: every message that crosses the wire, both directions.

:class:`LedgerGrid` wraps Flower's ``Grid`` and counts each message where it is sent and received,
so no strategy has to remember to: one row per message with four byte figures (codec payload,
``ArrayRecord.count_bytes()``, every record's ``count_bytes()`` as Flower's ``message_size_mod``
reports it, and the serialized protobuf size). Totals are sums over rows, so a report can always
be traced back to individual messages. Each row also counts the ``values`` (adapter parameters)
its payload carries, as the payload's manifest declares them: bytes ÷ values is the bytes one
value cost on the wire, framing included.
"""

from __future__ import annotations

import csv
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from fedkron.compression import MANIFEST_KEY, payload_bytes, payload_values
from fedkron.compression.manifest import MAX_MANIFEST_BYTES, load_manifest, manifest_bound, read_layout
from fedkron.flwr_private import message_to_proto
from fedkron.protocol import MANIFEST

MB = 1_000_000
FIGURES = ("payload", "count_bytes", "content_bytes", "serialized")


@dataclass
class LedgerRow:
    round: int
    direction: str  # "down" (server → client), "up" (client → server)
    kind: str  # Flower's message type: "train", "evaluate", "query"
    node_id: int
    partition_id: int
    payload: int
    count_bytes: int
    serialized: int
    status: str = "ok"  # "ok", "rejected", "failed" (an error reply)
    content_bytes: int = 0
    values: int = 0  # adapter values the payload carries (its manifest's tensor sizes); 0 in older ledgers


def content_bytes(msg: Message) -> int:
    """Every record's ``count_bytes()``, what Flower's ``message_size_mod`` logs; an empty string in
    a ConfigRecord (which makes Flower's count raise) counts its key only."""
    total = 0
    for record in msg.content.values():
        try:
            total += record.count_bytes()
        except ValueError:
            total += sum(len(k) + (len(v) if isinstance(v, (str, bytes)) else 8) for k, v in record.items())
    return total


def reply_payload(msg: Message, expected: Mapping[str, tuple[int, ...]] | None) -> tuple[int, int]:
    """(payload bytes, values) of a training reply, read as ``read_reply`` reads it: the ``manifest``
    record only, inflated at most to the bound of the ``expected`` tensors and checked against
    them; (0, 0) when it cannot be read so (the reply will be rejected)."""
    if msg.metadata.message_type != MessageType.TRAIN or MANIFEST not in msg.content:
        return 0, 0
    record = msg.content[MANIFEST]
    raw = record.get(MANIFEST_KEY) if isinstance(record, ConfigRecord) else None
    if not isinstance(raw, bytes):
        return 0, 0
    try:
        bound = manifest_bound(expected) if expected else MAX_MANIFEST_BYTES
        layout = read_layout(load_manifest(raw, bound), expected)
    except Exception:  # PayloadError, or whatever a hostile manifest raises: nothing readable
        return 0, 0
    values = sum(math.prod(shape) for shape in layout.shapes)
    return len(raw) + layout.code_offsets[-1] + 4 * layout.scale_offsets[-1], values


def sent_payload(msg: Message) -> tuple[int, int]:
    """(payload bytes, values) of a message this server built (its own manifest, sizes remembered)."""
    record = msg.content[MANIFEST] if MANIFEST in msg.content else None
    if not isinstance(record, ConfigRecord):
        return 0, 0
    return payload_bytes(record), payload_values(record)


class Ledger:
    """Append-only list of :class:`LedgerRow` with the totals a report needs."""

    def __init__(self) -> None:
        self.rows: list[LedgerRow] = []
        self._row_of: dict[str, int] = {}  # message id → row, to mark a reply rejected later
        self.expected: dict[str, tuple[int, ...]] | None = None  # the tensors a reply's payload may hold

    def expect(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """The tensor names and shapes a reply's payload may hold (what the strategy passes to
        ``read_reply``): a reply's manifest is read within the same bound."""
        self.expected = {name: tuple(shape) for name, shape in expected.items()}

    def add(self, row: LedgerRow, message_id: str = "") -> None:
        if message_id:
            self._row_of[message_id] = len(self.rows)
        self.rows.append(row)

    def record(self, msg: Message, direction: str, partition_id: int, node: int | None = None) -> None:
        """Count one message as it crosses the wire (``node``: the client's id, when not the
        message's own destination or source)."""
        if node is None:
            node = msg.metadata.dst_node_id if direction == "down" else msg.metadata.src_node_id
        figures = self._figures(msg, direction)
        try:
            figures["serialized"] = message_to_proto(msg).ByteSize()
        except Exception:  # a reply that does not even serialize: count its records
            figures["serialized"] = figures.get("content_bytes", 0)
        group = msg.metadata.group_id
        self.add(
            LedgerRow(
                round=int(group) if group.isdigit() else 0,
                direction=direction,
                kind=msg.metadata.message_type,
                node_id=int(node),
                partition_id=int(partition_id),
                status="failed" if msg.has_error() else "ok",
                **figures,
            ),
            message_id=msg.metadata.message_id if direction == "up" else "",
        )

    def _figures(self, msg: Message, direction: str) -> dict[str, int]:
        """``payload``, ``count_bytes``, ``content_bytes`` and ``values`` of one message (0 for an error
        reply)."""
        if msg.has_error():
            return {"payload": 0, "count_bytes": 0, "content_bytes": 0, "values": 0}
        payload, values = sent_payload(msg) if direction == "down" else reply_payload(msg, self.expected)
        arrays = msg.content.array_records.values()
        try:
            count = sum(record.count_bytes() for record in arrays)
        except Exception:  # arrays that do not even count: what arrived
            count = sum(len(a.data) for record in arrays for a in record.values())
        try:
            content = content_bytes(msg)
        except Exception:
            content = count
        return {"payload": payload, "count_bytes": count, "content_bytes": content, "values": values}

    def annotate(self, msg: Message, **values) -> None:
        """Complete the row of a recorded reply with what was learnt by reading it (its ``status``
        once the strategy has checked it, the ``partition_id`` a query answer names)."""
        index = self._row_of.get(msg.metadata.message_id)
        if index is not None:
            for key, value in values.items():
                setattr(self.rows[index], key, value)

    def total(self, direction: str, figure: str = "serialized", round: int | None = None) -> int:
        return sum(
            getattr(r, figure) for r in self.rows if r.direction == direction and (round is None or r.round == round)
        )

    def per_round(self, direction: str, figure: str = "serialized") -> dict[int, int]:
        out: dict[int, int] = defaultdict(int)
        for r in self.rows:
            if r.direction == direction:
                out[r.round] += getattr(r, figure)
        return dict(sorted(out.items()))

    def count(self, direction: str, kind: str = "train") -> int:
        """Messages of one kind that carried content (error replies left out)."""
        return sum(1 for r in self.rows if r.direction == direction and r.kind == kind and r.status != "failed")

    def totals(self) -> dict[str, int]:
        """``bytes_up``/``bytes_down`` (serialized) plus every figure by direction."""
        out = {"bytes_up": self.total("up"), "bytes_down": self.total("down")}
        for direction in ("up", "down"):
            for figure in FIGURES:
                out[f"{direction}_{figure}"] = self.total(direction, figure)
        return out

    def write_csv(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(LedgerRow)])
            writer.writeheader()
            for row in self.rows:
                writer.writerow(asdict(row))
        tmp.replace(path)

    @classmethod
    def read_csv(cls, path: str | Path) -> Ledger:
        ledger = cls()
        with Path(path).open(newline="") as fh:
            for rec in csv.DictReader(fh):
                kwargs = {}
                for f in fields(LedgerRow):
                    if f.name not in rec:  # a column older ledgers lack
                        continue
                    kwargs[f.name] = rec[f.name] if f.type in ("str", str) else int(rec[f.name])
                ledger.add(LedgerRow(**kwargs))
        return ledger


class LedgerGrid(Grid):
    """Flower's ``Grid`` with every message it sends and receives counted in ``ledger``.

    ``partition_of`` names a node's partition for the ledger (-1 while unknown). Messages are
    counted after the Grid has stamped them (message id, run id), so the serialized size is the
    size of what was sent.
    """

    def __init__(
        self,
        grid: Grid,
        ledger: Ledger,
        partition_of: Callable[[int], int] = lambda node: -1,
        on_reply: Callable[[str, int, int, float], None] | None = None,
        pull_interval: float = 0.5,
    ):
        """``on_reply(kind, replies so far, messages sent, seconds)`` is told of each reply as it
        arrives (progress inside a round)."""
        self.grid, self.ledger, self.partition_of = grid, ledger, partition_of
        self.on_reply, self.pull_interval = on_reply, pull_interval
        self._asked: dict[str, int] = {}  # message id → the node it went to, until its reply comes

    def _sent(self, messages: list[Message]) -> None:
        for m in messages:
            self._asked[m.metadata.message_id] = m.metadata.dst_node_id
            self.ledger.record(m, "down", self.partition_of(m.metadata.dst_node_id))

    def _received(self, replies: list[Message]) -> list[Message]:
        for m in replies:  # an error reply Flower makes for an unreachable node names no node: take the asked one
            node = self._asked.pop(m.metadata.reply_to_message_id, m.metadata.src_node_id)
            self.ledger.record(m, "up", self.partition_of(node), node=node)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Flower's push-then-pull loop (as its own Grids do it), counting each message and telling
        ``on_reply`` of each reply as it comes."""
        messages = list(messages)
        if not messages:
            return []
        t0 = time.monotonic()
        pending = set(self.grid.push_messages(messages))
        self._sent(messages)
        kind, total, replies = messages[0].metadata.message_type, len(pending), []
        while pending and (timeout is None or time.monotonic() - t0 < timeout):
            got = list(self.grid.pull_messages(pending))
            pending -= {m.metadata.reply_to_message_id for m in got}
            replies += self._received(got)
            if got and self.on_reply:
                self.on_reply(kind, len(replies), total, time.monotonic() - t0)
            if pending:
                time.sleep(self.pull_interval)
        return replies

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        self._sent(messages)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._received(list(self.grid.pull_messages(message_ids)))

    # --- plain delegation -------------------------------------------------------------------
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()
