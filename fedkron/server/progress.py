"""One readable line per round, printed as the run goes."""

from fedkron.server.ledger import MB


def _pct(value) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def format_round(row: dict) -> str:
    parts = [f"round {row['round']:>3}"]
    if row.get("accuracy") is not None:
        parts.append(f"acc {_pct(row['accuracy'])} (majority {100 * row['majority_baseline']:4.1f}%)  "
                     f"loss {row['loss']:.3f}")
    if row.get("fed_accuracy") is not None:
        parts.append(f"clients' acc {_pct(row['fed_accuracy'])} ({row['fed_examples']} rows)")
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.3f}")
    parts.append(f"up {row['bytes_up_total'] / MB:8.3f} MB  down {row['bytes_down_total'] / MB:8.3f} MB  "
                 f"{row['seconds']:6.1f} s")
    if row.get("rejected") or row.get("failed"):
        parts.append(f"rejected {row['rejected']} failed {row['failed']}")
    return "  ".join(parts)
