"""One readable line per round, printed as the run goes."""

MB = 1_000_000


def format_round(row: dict) -> str:
    flags = ""
    if row.get("rejected") or row.get("failed"):
        flags = f"  rejected {row['rejected']} failed {row['failed']}"
    return (
        f"round {row['round']:>3}  acc {100 * row['accuracy']:5.1f}% "
        f"(majority {100 * row['majority_baseline']:4.1f}%)  loss {row['loss']:.3f}  "
        f"up {row['bytes_up_total'] / MB:8.3f} MB  down {row['bytes_down_total'] / MB:8.3f} MB  "
        f"{row['seconds']:6.1f} s{flags}"
    )
