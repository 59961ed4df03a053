"""One readable line per round, printed as the run goes."""

import sys

from fedkron.server.ledger import MB


def _pct(value) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def format_round(row: dict) -> str:
    parts = [f"round {row['round']:>3}"]
    if row.get("accuracy") is not None:
        parts.append(
            f"acc {_pct(row['accuracy'])} (majority {100 * row['majority_baseline']:4.1f}%)  loss {row['loss']:.3f}"
        )
    if row.get("fed_accuracy") is not None:
        parts.append(f"clients' acc {_pct(row['fed_accuracy'])} ({row['fed_examples']} rows)")
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.3f}")
    parts.append(
        f"up {row['bytes_up_total'] / MB:8.3f} MB  down {row['bytes_down_total'] / MB:8.3f} MB  {row['seconds']:6.1f} s"
    )
    if row.get("rejected") or row.get("failed"):
        parts.append(f"rejected {row['rejected']} failed {row['failed']}")
    return "  ".join(parts)


class ReplyTicker:
    """Progress inside a round ("round 3: 2/4 clients replied, 41 s"), so a long round is not
    silent: rewritten in place on a terminal, else a line at most every ``every`` seconds."""

    def __init__(self, every: float = 20.0, stream=None):

        self.stream = stream or sys.stdout
        self.every, self.last, self.round = every, 0.0, 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, kind: str, done: int, total: int, seconds: float) -> None:
        if kind not in ("train", "evaluate") or done >= total:
            if self.tty and done >= total:
                self.stream.write("\r\033[K")
                self.stream.flush()
            return
        what = "clients replied" if kind == "train" else "clients scored"
        text = f"  round {self.round}: {done}/{total} {what}, {seconds:.0f} s"
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif seconds - self.last >= self.every or seconds < self.last:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last = seconds
