"""fedkron.data partitioning: exact cover, determinism per seed, Dirichlet label skew, natural domains."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.data import PartitionError, label_histogram, partition, partition_indices


def labelled(labels, domains=None) -> datasets.Dataset:
    cols = {"text": [f"row {i}" for i in range(len(labels))], "label": list(labels)}
    if domains is not None:
        cols["domain"] = list(domains)
    return datasets.Dataset.from_dict(cols)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(20, 300),
    num_partitions=st.integers(1, 10),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    seed=st.integers(0, 2**16),
    data_seed=st.integers(0, 1000),
)
def test_partitions_cover_each_row_once_and_repeat_per_seed(n, num_partitions, scheme, seed, data_seed):
    ds = labelled(np.random.default_rng(data_seed).integers(0, 3, n).tolist())
    kwargs = {"alpha": 1.0, "seed": seed, "min_partition_size": 0}  # 0: any Dirichlet draw is accepted
    parts = partition_indices(ds, num_partitions, scheme, **kwargs)
    assert len(parts) == num_partitions
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert parts == partition_indices(ds, num_partitions, scheme, **kwargs)


def test_seed_changes_the_split_and_datasets_match_indices():
    ds = labelled([i % 2 for i in range(200)])
    a, b = partition_indices(ds, 4, "iid", seed=0), partition_indices(ds, 4, "iid", seed=1)
    assert a != b
    assert all(len(p) == 50 for p in a)
    views = partition(ds, 4, "iid", seed=0)
    assert [list(v[:]["text"]) for v in views] == [[f"row {i}" for i in p] for p in a]


def _label_skew(parts, num_labels=2) -> float:
    """Mean total-variation distance between each partition's label mix and the overall mix."""
    hists = np.stack([label_histogram(p, num_labels) for p in parts]).astype(float)
    overall = hists.sum(0) / hists.sum()
    shares = hists / hists.sum(1, keepdims=True)
    return float(np.abs(shares - overall).sum(1).mean() / 2)


def test_dirichlet_skews_labels_more_than_iid():
    ds = labelled([i % 2 for i in range(2000)])
    iid = _label_skew(partition(ds, 10, "iid", seed=0))
    skewed = _label_skew(partition(ds, 10, "dirichlet", alpha=0.3, seed=0))
    mild = _label_skew(partition(ds, 10, "dirichlet", alpha=100.0, seed=0))
    assert iid < 0.05 and mild < 0.1
    assert skewed > 0.25 > iid


def test_natural_partition_gives_each_client_group_one_domain():
    domains = ["books", "dvd", "kitchen"] * 40
    ds = labelled([i % 2 for i in range(120)], domains)
    per_domain = partition(ds, 3, "natural")
    assert [set(p[:]["domain"]) for p in per_domain] == [{"books"}, {"dvd"}, {"kitchen"}]
    grouped = partition(ds, 6, "natural", seed=3)
    assert [set(p[:]["domain"]) for p in grouped] == [{"books"}] * 2 + [{"dvd"}] * 2 + [{"kitchen"}] * 2
    assert sorted(i for p in partition_indices(ds, 6, "natural", seed=3) for i in p) == list(range(120))


@pytest.mark.parametrize("verbose", ["", "1"])
def test_natural_partition_draws_flwr_datasets_bar_only_when_verbose(verbose, capfd, monkeypatch):
    """NaturalIdPartitioner draws a tqdm bar on its first load, which every client's Ray actor printed."""
    monkeypatch.setenv("FEDKRON_VERBOSE", verbose)
    partition_indices(labelled([0, 1] * 6, ["books", "dvd", "kitchen"] * 4), 3, "natural")
    assert ("partition_id_to_indices" in capfd.readouterr().err) == bool(verbose)


@pytest.mark.parametrize(
    ("num_partitions", "scheme", "match"),
    [
        (0, "iid", "num_partitions must be an int >= 1"),
        (11, "iid", "10 rows, fewer than the 11 partitions asked for"),
        (2, "natural", "needs a 'domain' column"),
        (2, "round-robin", "unknown scheme 'round-robin'"),
    ],
)
def test_bad_partition_requests(num_partitions, scheme, match):
    with pytest.raises(PartitionError, match=match):
        partition_indices(labelled([0, 1] * 5), num_partitions, scheme)


def test_natural_needs_multiple_of_domains_and_dirichlet_reports_infeasible():
    ds = labelled([0, 1] * 30, ["a", "b", "c"] * 20)
    with pytest.raises(PartitionError, match="multiple of the 3 distinct 'domain'"):
        partition_indices(ds, 4, "natural")
    with pytest.raises(PartitionError, match="alpha must be > 0"):
        partition_indices(ds, 2, "dirichlet", alpha=0)
    with pytest.raises(PartitionError, match="raise alpha"):
        partition_indices(ds, 6, "dirichlet", alpha=0.01, min_partition_size=10)
