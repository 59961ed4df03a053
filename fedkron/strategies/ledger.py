"""The communication ledger: every message that crosses the wire, both directions.

One row per message with the three byte figures of :func:`fedkron.compression.message_byte_figures`
(codec payload, ``ArrayRecord.count_bytes()``, serialized protobuf size), so totals are sums over
rows and a report can always be traced back to individual messages.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

FIGURES = ("payload", "count_bytes", "serialized")


@dataclass
class LedgerRow:
    round: int
    direction: str  # "down" (server → client), "up" (client → server)
    kind: str  # "train", "query"
    node_id: int
    partition_id: int
    payload: int
    count_bytes: int
    serialized: int
    status: str = "ok"  # "ok", "rejected", "failed"


class Ledger:
    """Append-only list of :class:`LedgerRow` with the totals a report needs."""

    def __init__(self) -> None:
        self.rows: list[LedgerRow] = []

    def add(self, row: LedgerRow) -> None:
        self.rows.append(row)

    def total(self, direction: str, figure: str = "serialized", round: int | None = None) -> int:
        return sum(
            getattr(r, figure)
            for r in self.rows
            if r.direction == direction and (round is None or r.round == round)
        )

    def per_round(self, direction: str, figure: str = "serialized") -> dict[int, int]:
        out: dict[int, int] = defaultdict(int)
        for r in self.rows:
            if r.direction == direction:
                out[r.round] += getattr(r, figure)
        return dict(sorted(out.items()))

    def count(self, direction: str, kind: str = "train") -> int:
        return sum(1 for r in self.rows if r.direction == direction and r.kind == kind)

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
    def read_csv(cls, path: str | Path) -> "Ledger":
        ledger = cls()
        with Path(path).open(newline="") as fh:
            for rec in csv.DictReader(fh):
                kwargs = {}
                for f in fields(LedgerRow):
                    kwargs[f.name] = rec[f.name] if f.type in ("str", str) else int(rec[f.name])
                ledger.add(LedgerRow(**kwargs))
        return ledger
