"""The data each side of a run sees, encoded for the run's model, once per process.

Encoders (and T5) get token tensors for a classification or multiple-choice head; a language model
gets every task as multiple choice scored by the LM (training on the gold answer's tokens only) or,
for ``--task instruct``, instruction tuning. Clients see their partition; the server a seeded
sample of the held-out split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fedkron.data import (
    cached_tensors,
    custom_task,
    eval_sample,
    get_client_data,
    get_eval_data,
    get_partition_rows,
    get_splits,
    get_task,
    majority_baseline,
    partition_indices,
)
from fedkron.data.lm_encode import encode_instructions, encode_mc_for_lm, encode_mc_for_training
from fedkron.data.lm_prompts import format_instruction
from fedkron.data.lm_rows import instruction_splits, lm_choice_rows
from fedkron.models import is_language_model, load_tokenizer
from fedkron.runconfig.fields import RunConfig


@functools.lru_cache(maxsize=8)
def _custom_spec(train, eval_file, text_column, text_pair_column, label_column):

    return custom_task(
        train,
        eval_file or None,
        text_column=text_column,
        text_pair_column=text_pair_column or None,
        label_column=label_column,
    )


def task_spec(cfg: RunConfig):
    """The run's TaskSpec (built from --train-file for ``custom``); None for ``instruct``."""

    if cfg.task == "instruct":
        return None
    if cfg.task == "custom":
        return _custom_spec(cfg.train_file, cfg.eval_file, cfg.text_column, cfg.text_pair_column, cfg.label_column)
    return get_task(cfg.task)


def model_shape(cfg: RunConfig) -> tuple[int, bool]:
    """(labels or choices, multiple choice?) of the task head ``build_model`` puts on an encoder."""
    spec = task_spec(cfg)
    return (0, False) if spec is None else (spec.num_labels, spec.is_multiple_choice)


def data_layout(cfg: RunConfig, task) -> str:
    """How rows are encoded for this run's model: "dual" only for a dual multiple-choice head."""
    return "dual" if task.is_multiple_choice and cfg.mc_head == "dual" else "cross"


@functools.lru_cache(maxsize=4)
def _instruction_splits(train: str, eval_file: str, seed: int):

    return instruction_splits(train, eval_file or None, seed)


def _rows(cfg: RunConfig, split: str, partition: tuple[int, int] | None):
    """The rows of a client's partition (``partition`` = (id, count)) or of the held-out sample."""

    if cfg.task == "instruct":
        rows = _instruction_splits(cfg.train_file, cfg.eval_file, cfg.seed)[split]
        if partition is None:
            return eval_sample(rows, cfg.eval_samples or None, cfg.seed)
        return rows.select(partition_indices(rows, partition[1], "iid", seed=cfg.seed)[partition[0]])
    spec, data_dir = task_spec(cfg), cfg.data_dir or None
    if partition is None:
        return eval_sample(
            get_splits(spec, data_dir=data_dir, seed=cfg.seed)[split], cfg.eval_samples or None, cfg.seed
        )
    rows = get_partition_rows(
        spec,
        partition[0],
        partition[1],
        scheme=cfg.partition,
        alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
        data_dir=data_dir,
        split=split,
    )
    return rows if split == "train" else eval_sample(rows, cfg.eval_samples or None, cfg.seed)


def _lm_tensors(cfg: RunConfig, split: str, partition: tuple[int, int] | None, training: bool):
    """A language model's tensors: the answer-only training set, or multiple choice to score (or
    instruction rows to measure loss and perplexity on)."""

    key = (  # everything the rows and their encoding read (a `custom` file's columns too)
        "lm",
        cfg.model,
        cfg.task,
        cfg.train_file,
        cfg.eval_file,
        cfg.text_column,
        cfg.text_pair_column,
        cfg.label_column,
        cfg.data_dir,
        cfg.seed,
        cfg.partition,
        cfg.dirichlet_alpha,
        split,
        partition,
        training,
        cfg.max_length,
        cfg.eval_samples,
    )

    def make():
        rows, tokenizer = _rows(cfg, split, partition), load_tokenizer(cfg.model)
        if cfg.task == "instruct":
            return encode_instructions(list(rows), tokenizer, cfg.max_length)
        choice_rows, prompt = lm_choice_rows(task_spec(cfg), rows)
        encode = encode_mc_for_training if training else encode_mc_for_lm
        return encode(choice_rows, tokenizer, cfg.max_length, task=prompt)

    return cached_tensors(key, make)


def client_data(cfg: RunConfig, partition_id: int, num_partitions: int, split: str = "train") -> dict:
    """Encoded tensors of this client's partition; ``split="test"``: its share of the held-out
    split (its own data for federated evaluation), encoded for scoring."""

    if is_language_model(cfg.model):
        return _lm_tensors(cfg, split, (partition_id, num_partitions), training=split == "train")
    spec = task_spec(cfg)
    data = get_client_data(
        spec,
        partition_id,
        num_partitions,
        load_tokenizer(cfg.model),
        cfg.max_length,
        scheme=cfg.partition,
        alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
        data_dir=cfg.data_dir or None,
        layout=data_layout(cfg, spec),
        split=split,
    )
    rows = int(data["labels"].shape[0])
    if split != "train" and cfg.eval_samples and rows > cfg.eval_samples:  # a seeded sample, as on the server
        keep = torch.randperm(rows, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.eval_samples]
        data = {k: v[keep] for k, v in data.items()}
    return data


def generation_prompts(cfg: RunConfig, n: int = 3) -> list[str]:
    """The first ``n`` held-out instructions, formatted as the model is prompted (for samples)."""

    rows = _instruction_splits(cfg.train_file, cfg.eval_file, cfg.seed)["test"]
    tokenizer = load_tokenizer(cfg.model)
    return [format_instruction(row, tokenizer)[0] for row in rows.select(range(min(n, len(rows))))]


@dataclass
class EvalSet:
    data: dict[str, torch.Tensor]
    num_rows: int
    majority_baseline: float | None
    note: str


def eval_data(cfg: RunConfig) -> EvalSet:
    """The held-out split the server scores every round (a seeded sample of ``eval_samples`` rows)."""

    rows = _rows(cfg, "test", None)
    if cfg.task == "instruct":
        full = len(_instruction_splits(cfg.train_file, cfg.eval_file, cfg.seed)["test"])
        data, majority = _lm_tensors(cfg, "test", None, training=False), None
    else:
        spec = task_spec(cfg)
        full = len(get_splits(spec, data_dir=cfg.data_dir or None, seed=cfg.seed)["test"])
        majority = majority_baseline(rows)
        if is_language_model(cfg.model):
            data = _lm_tensors(cfg, "test", None, training=False)
        else:
            data = get_eval_data(
                spec,
                load_tokenizer(cfg.model),
                cfg.max_length,
                max_samples=cfg.eval_samples or None,
                seed=cfg.seed,
                data_dir=cfg.data_dir or None,
                layout=data_layout(cfg, spec),
            )
    n = len(rows)
    note = (
        f"scored on all {n} held-out rows" if n == full else f"scored on a seeded sample of {n} of {full} held-out rows"
    )
    return EvalSet(data=data, num_rows=n, majority_baseline=majority, note=note)
