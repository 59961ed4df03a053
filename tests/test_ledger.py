"""The ledger: every message counted where it crosses the Grid, in agreement with Flower's own mods."""

import logging
import re

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import arrays_size_mod, message_size_mod
from loopback import LoopbackGrid

from fedkron.adapters import adapter_factor_roles, adapter_state_dict
from fedkron.client.worker import handle_train
from fedkron.models import build_model
from fedkron.runconfig.fields import RunConfig
from fedkron.server.ledger import Ledger, LedgerGrid, LedgerRow
from fedkron.strategies.registry import build_strategy
from fedkron.strategies.wrapper import FedKron, to_arrayrecord


def test_ledger_totals_and_csv_round_trip(tmp_path):
    ledger = Ledger()
    ledger.add(LedgerRow(1, "down", "train", 11, 0, 100, 120, 150, content_bytes=130))
    ledger.add(LedgerRow(1, "up", "train", 11, 0, 10, 30, 60))
    ledger.add(LedgerRow(2, "up", "train", 12, 1, 20, 40, 70, status="rejected"))
    ledger.add(LedgerRow(2, "up", "train", 13, 2, 0, 0, 30, status="failed"))
    assert ledger.total("up") == 160 and ledger.total("down", "payload") == 100
    assert ledger.per_round("up") == {1: 60, 2: 100}
    assert ledger.count("up") == 2  # an error reply carried no update
    ledger.write_csv(tmp_path / "ledger.csv")
    again = Ledger.read_csv(tmp_path / "ledger.csv")
    assert again.rows == ledger.rows and again.totals() == ledger.totals()
    # ledgers written before the values column, and before the content_bytes column, still read
    lines = (tmp_path / "ledger.csv").read_text().splitlines()
    assert lines[0].endswith(",content_bytes,values")
    for dropped, content in ((1, [130, 0, 0, 0]), (2, [0, 0, 0, 0])):
        old = tmp_path / f"old{dropped}.csv"
        old.write_text("\n".join(",".join(line.split(",")[:-dropped]) for line in lines) + "\n")
        rows = Ledger.read_csv(old).rows
        assert [r.content_bytes for r in rows] == content and [r.values for r in rows] == [0, 0, 0, 0]


def _tiny_run(num_nodes, handler, **kw):
    cfg = RunConfig(
        model="tiny-bert",
        task="sst2",
        clients=num_nodes,
        rounds=1,
        local_steps=1,
        batch_size=4,
        max_length=16,
        eval_samples=8,
        **kw,
    ).resolved()
    model = build_model(cfg, num_labels=2)
    initial = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    ledger = Ledger()
    strategy = FedKron(build_strategy(cfg), cfg, initial, adapter_factor_roles(model), ledger=ledger)
    grid = LedgerGrid(
        LoopbackGrid(num_nodes, handler), ledger, partition_of=lambda n: strategy.roster.partition_of.get(n, -1)
    )
    strategy.start(grid, to_arrayrecord(initial), num_rounds=1, timeout=60)
    return ledger, grid


def test_ledger_agrees_with_flowers_message_and_arrays_size_mods(flower_identity, caplog):
    """The same messages through a ClientApp with Flower's size mods: the sizes they log on the
    client equal the ledger's ``content_bytes`` (message_size_mod) and ``count_bytes``
    (arrays_size_mod) on the server, both directions."""
    app = ClientApp(mods=[message_size_mod, arrays_size_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from fedkron.client.worker import handle_query

        return handle_query(msg, context)

    with caplog.at_level(logging.INFO, logger="flwr"):
        ledger, _ = _tiny_run(2, lambda msg, ctx: app(msg, ctx))
    text = "\n".join(r.getMessage() for r in caplog.records)
    incoming = [int(x) for x in re.findall(r"Incoming message size: (\d+) bytes", text)]
    outgoing = [int(x) for x in re.findall(r"Outgoing message size: (\d+) bytes", text)]
    arrays_in = [int(x) for x in re.findall(r"Total array elements received: (\d+) bytes", text)]
    arrays_out = [int(x) for x in re.findall(r"Total array elements sent: (\d+) bytes", text)]
    down = [r for r in ledger.rows if r.direction == "down"]
    up = [r for r in ledger.rows if r.direction == "up"]
    assert len(down) == len(up) == 4  # 2 partition queries + 2 training messages each way
    assert sorted(incoming) == sorted(r.content_bytes for r in down)
    assert sorted(outgoing) == sorted(r.content_bytes for r in up)
    assert sorted(arrays_in) == sorted(r.count_bytes for r in down)
    assert sorted(arrays_out) == sorted(r.count_bytes for r in up)
    train_up = [r for r in up if r.kind == "train"]
    assert all(r.payload > 0 and r.serialized > r.content_bytes > r.count_bytes for r in train_up)


def test_every_message_is_counted_once_with_its_round_kind_and_partition(flower_identity):
    def handler(msg, ctx):
        from fedkron.client.worker import handle_query

        return handle_query(msg, ctx) if msg.metadata.message_type == "query" else handle_train(msg, ctx)

    ledger, grid = _tiny_run(3, handler)
    assert len(ledger.rows) == 2 * len(grid.grid.sent) == 12
    assert sorted((r.round, r.kind, r.direction) for r in ledger.rows) == sorted(
        [(0, "query", d) for d in ("down", "up") for _ in range(3)]
        + [(1, "train", d) for d in ("down", "up") for _ in range(3)]
    )
    train = [r for r in ledger.rows if r.kind == "train"]
    assert sorted(r.partition_id for r in train) == [0, 0, 1, 1, 2, 2]
    assert sorted(r.partition_id for r in ledger.rows if r.kind == "query" and r.direction == "up") == [0, 1, 2]


def test_ledger_values_are_the_values_each_payload_carries(flower_identity, tmp_path):
    """``values`` per row equals the tensor values decoded from that very message (a real encode,
    both ways), whatever the codec; query messages carry none; and it survives the CSV."""
    from fedkron.client.worker import handle_query
    from fedkron.compression import decode, from_records
    from fedkron.protocol import ARRAYS, MANIFEST

    def values_in(msg):  # every value the message's payload decodes to
        return sum(t.numel() for t in decode(from_records(msg.content[ARRAYS], msg.content[MANIFEST])).values())

    sent_up = []  # counted as each reply leaves: the server later swaps its content

    def handler(msg, ctx):
        if msg.metadata.message_type == "query":
            return handle_query(msg, ctx)
        reply = handle_train(msg, ctx)
        sent_up.append(values_in(reply))
        return reply

    ledger, grid = _tiny_run(2, handler, uplink="nf4", downlink="fp32")
    rows = {d: sorted(r.values for r in ledger.rows if r.kind == "train" and r.direction == d) for d in ("down", "up")}
    sent_down = [values_in(m) for m in grid.grid.sent if m.metadata.message_type == "train"]
    assert rows["down"] == sorted(sent_down) and rows["up"] == sorted(sent_up)
    assert len(rows["up"]) == 2 and min(rows["up"]) > 0
    assert all(r.values == 0 for r in ledger.rows if r.kind == "query")
    ledger.write_csv(tmp_path / "ledger.csv")
    assert [r.values for r in Ledger.read_csv(tmp_path / "ledger.csv").rows] == [r.values for r in ledger.rows]
