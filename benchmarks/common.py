"""What several benchmarks share. Importable as ``common`` when a script runs as
``python benchmarks/bench_x.py`` (Python puts the script's folder first on the path).

The run flags themselves come from the package (:func:`fedkron.runconfig.flags.add_run_flags`);
this module holds only the benchmarks' own choices, each with its reason.
"""

from __future__ import annotations

# The federation of the savings evidence (docs/results.md), shared by bench_savings, bench_compare
# and bench_edge_time so their figures describe one setting: 20 clients with label skew (Dirichlet
# 0.5), 4 trained a round (partial participation, as in cross-device federations); 10 rounds × 15
# local steps; the logit-adjusted local loss, because with plain `ce` the global classifier swings
# between the classes round to round under Dirichlet 0.5 at fraction 0.2; and every held-out row
# scored (eval_samples 0), so an accuracy is not a sample's.
FEDERATION = dict(
    clients=20,
    fraction=0.2,
    rounds=10,
    local_steps=15,
    partition="dirichlet",
    dirichlet_alpha=0.5,
    local_loss="logit-adjusted",
    eval_samples=0,
)
FEDERATION_FLAGS = tuple(FEDERATION)


def print_round(label: str, row: dict) -> None:
    """One progress line per finished round of a compare run."""
    acc = row.get("accuracy")
    shown = "–" if acc is None else f"{100 * acc:.1f}%"
    sim = f" sim {row['sim_seconds']:.0f} s" if row.get("sim_seconds") is not None else ""
    print(f"[{label}] round {row['round']} acc {shown}{sim}", flush=True)
