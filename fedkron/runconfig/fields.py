"""One typed run config that flows to every part of a run, and the one definition of every setting.

Each field carries its help text, allowed values and flag group: the CLI flags, the
``[tool.flwr.app.config]`` table and docs/cli.md's flag table are all checked against (or made
from) these fields, so a setting is written down once. Built from CLI flags, from Flower's run
config or from the ConfigRecord the server broadcasts; validated once.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedkron.adapters.config import METHODS, SHAPE_POLICIES
from fedkron.compression import CODECS
from fedkron.compression.manifest import DOUBLE_QUANT_CODECS
from fedkron.compression.payload import BLOCK_SIZES, CODE_BITS
from fedkron.data.partition import SCHEMES as PARTITIONS
from fedkron.runconfig.checks import validate
from fedkron.runconfig.choices import (
    AGGREGATIONS,
    BASE_QUANTS,
    DEFAULT_ROUND_TIMEOUT,
    DEVICES,
    LOCAL_LOSSES,
    LOCAL_OPTS,
    LR_SCHEDULES,
    MC_HEADS,
    METHOD_DEFAULTS,
    TASK_DEFAULTED,
    TASK_DEFAULTS,
    ConfigError,
    flag,
)
from fedkron.strategies.registry import STRATEGIES


def knob(default: Any, help: str, group: str, choices: tuple | None = None, cli: bool = True) -> Any:
    """A RunConfig field with the facts the CLI, the Flower app config and docs/cli.md read."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "cli": cli})


def bits_to_codec(bits: int, quant: str | None = None) -> str:
    """Map ``--bits`` (+ optional ``--quant``) to a codec name: 4 → nf4 unless fp4 is asked for."""
    table = {32: "fp32", 16: "fp16", 8: "int8", 4: quant or "nf4"}
    if bits not in table:
        raise ConfigError(f"--bits must be one of 4, 8, 16, 32 (got {bits})")
    codec = table[bits]
    if bits == 4 and codec not in ("nf4", "fp4"):
        raise ConfigError(f"--bits 4 takes --uplink nf4 or fp4 (got {codec!r})")
    if bits == 16 and quant in ("bf16", "fp16"):
        codec = quant
    return codec


def codec_bits(codec: str) -> int:
    return CODE_BITS[codec]


# Flag groups, in the order `fedkron sim --help`, docs/cli.md and the Flower app config list them.
MODEL, ADAPTER, COMMUNICATION, FEDERATION, AGGREGATION = (
    "model and task",
    "adapter",
    "communication",
    "federation",
    "aggregation",
)
PRIVACY, LOCAL_TRAINING, EDGE, OUTPUT = ("privacy", "local training", "edge devices", "output")


@dataclass
class RunConfig:
    """Every knob of a run. Field names are the Flower run-config keys with ``-`` → ``_``."""

    # Model and task
    model: str = knob(
        "minilm-l6",
        "`minilm-l6` (offline, pretrained), `tiny-bert` (random 2-layer BERT for tests), a hub id or a local folder",
        MODEL,
    )
    task: str = knob(
        "sst2",
        "the task (`sst2` ships with fedkron; the others come from --data-dir or the hub); see docs/sim.md",
        MODEL,
    )
    data_dir: str = knob(
        "", "a folder laid out like `shared/data` (default: packaged data, `$FEDKRON_DATA_DIR`, then the hub)", MODEL
    )
    train_file: str = knob(
        "",
        "`--task custom` (classification) or `instruct` (instruction tuning, Alpaca "
        "instruction/input/output or chat `messages`): a CSV, TSV, JSON or JSONL file, or a hub "
        "dataset id",
        MODEL,
    )
    eval_file: str = knob(
        "", "held-out file (or hub split) of `custom` / `instruct` (default: a seeded 10 % of --train-file)", MODEL
    )
    text_column: str = knob("text", "`custom`: the text column", MODEL)
    text_pair_column: str = knob("", "`custom`: a second text column (sentence pairs)", MODEL)
    label_column: str = knob("label", "`custom`: the label column (ints or strings)", MODEL)
    max_length: int = knob(0, "tokens per example", MODEL)
    mc_head: str = knob(
        "cross",
        "multiple choice: `cross` (each context+choice pair scored by a new linear "
        "head) or `dual` (cosine of context and choice embeddings: keeps a sentence encoder's "
        "pretraining)",
        MODEL,
        MC_HEADS,
    )
    eval_samples: int = knob(-1, "held-out rows scored each round, a seeded sample (0 = all)", MODEL)
    base_quant: str = knob(
        "none",
        "load a language model's frozen base in 4 bits (`nf4`, with double "
        "quantization) or 8 bits (`int8`) through bitsandbytes (QLoRA); adapters stay float",
        MODEL,
        BASE_QUANTS,
    )
    device: str = knob("auto", "where models run: `cuda` when present for `auto`", MODEL, DEVICES)
    gradient_checkpointing: bool = knob(
        False, "recompute activations in the backward pass (less memory, more time)", MODEL
    )
    # Adapter
    method: str = knob("kron-lora", "adapter: Kron-LoRA, KronA or LoRA", ADAPTER, METHODS)
    rank: int = knob(0, "rank r (0 = the method's default: Kron-LoRA 4, LoRA and KronA 8)", ADAPTER)
    alpha: float = knob(16.0, "scaling s = alpha / r", ADAPTER)
    targets: str = knob(
        "all-linear",
        "adapted layers: `all-linear` (every linear layer of the blocks, the "
        "paper's setting) or comma-separated module-name suffixes, e.g. `query,value` "
        "(FlowerTune's LoRA)",
        ADAPTER,
    )
    shape_policy: str = knob(
        "paper",
        "Kronecker factor shapes: `paper` (A has 2 input columns, B about 256 "
        "rows) or `peft` (PEFT LoKr's `decompose_factor`)",
        ADAPTER,
        SHAPE_POLICIES,
    )
    init_adapter: str = knob(
        "",
        "start from the final global adapter of results folder DIR (or an adapter folder, or its "
        "adapter_model.safetensors) instead of the seeded init; same model and adapter settings, "
        "see docs/continual.md ('' = the seeded init)",
        ADAPTER,
    )
    # Communication
    uplink: str = knob(
        "nf4",
        "codec of the clients' updates (`--bits 4|8|16|32` picks nf4, int8, fp16, fp32; "
        "`--quant` is a deprecated alias, removed in 0.3)",
        COMMUNICATION,
        CODECS,
    )
    downlink: str = knob(
        "nf4",
        "codec of the server's broadcast (the global state clients hold is its decoding; "
        "what it leaves out goes into the next one)",
        COMMUNICATION,
        CODECS,
    )
    block_size: int = knob(0, "quantisation block, a power of two ≥ 16 (0 = 64 for 4-bit, 256 for int8)", COMMUNICATION)
    double_quant: bool = knob(
        True,
        "quantise the block scales of nf4/fp4 to 8 bits (QLoRA's double quantization: "
        "4.54 → 4.19 bits per value, error ×1.0002)",
        COMMUNICATION,
    )
    error_feedback: bool = knob(
        True, "carry the quantisation error of an update into the client's next one", COMMUNICATION
    )
    # Federation
    clients: int = knob(0, "simulated clients, or the SuperNodes the server waits for", FEDERATION)
    rounds: int = knob(0, "federated rounds", FEDERATION)
    fraction: float = knob(
        1.0, "share of clients trained per round (seeded: the same clients for one seed)", FEDERATION
    )
    fraction_evaluate: float = knob(
        0.0,
        "share of clients that also score the global adapter on their own "
        "held-out data each round (federated evaluation; 0 = off)",
        FEDERATION,
    )
    central_eval: bool = knob(
        True,
        "score the global adapter on the held-out split on the server each round "
        "(off: a server without labelled data; use --fraction-evaluate)",
        FEDERATION,
    )
    min_replies: int = knob(1, "valid replies a round needs, else the run stops with a clear error", FEDERATION)
    partition: str = knob(
        "iid",
        "how the training data is split across clients (dirichlet: label skew; natural: one domain per client group)",
        FEDERATION,
        PARTITIONS,
    )
    dirichlet_alpha: float = knob(0.5, "label-skew concentration of the dirichlet partition", FEDERATION)
    round_timeout: float = knob(
        0.0, f"seconds to wait for replies in a round (0 = {DEFAULT_ROUND_TIMEOUT:.0f})", FEDERATION
    )
    seed: int = knob(0, "init, partitions, client sampling and batches", FEDERATION)
    # Aggregation
    strategy: str = knob(
        "fedavg", "Flower strategy that aggregates the decoded updates", AGGREGATION, tuple(STRATEGIES)
    )
    aggregation: str = knob(
        "",
        "what is averaged: `per-factor` (every factor), `exact` (only the output-side "
        "factor: Kron-LoRA B1, KronA B, LoRA B (FFA-LoRA); the others stay at their seeded init, "
        "so the average of the factors is the average of the ΔW) or `alternating` (one factor a "
        "round, in turn: Kron-LoRA B1, B2, A; KronA B, A; LoRA B, A; also exact, every factor "
        "learns; the downlink carries all factors); empty = the method's default "
        "(per-factor for every method; see docs/results.md)",
        AGGREGATION,
        ("",) + AGGREGATIONS,
    )
    server_lr: float = knob(
        1.0,
        "server learning rate (fedavg with ≠ 1: FedAvgM without momentum; "
        "fedavgm, fedadam, fedyogi, fedadagrad: their eta)",
        AGGREGATION,
    )
    server_momentum: float = knob(0.9, "server momentum of fedavgm", AGGREGATION)
    proximal_mu: float = knob(0.01, "proximal term weight of fedprox (clients add mu/2 ‖w − w_global‖²)", AGGREGATION)
    trim_fraction: float = knob(0.2, "share cut at each end by fedtrimmedavg", AGGREGATION)
    num_malicious: int = knob(0, "malicious clients krum and bulyan assume", AGGREGATION)
    max_update_norm: float = knob(
        0.0,
        "reject replies whose update norm exceeds this fixed bound, on top of --norm-bound-factor (0 = no fixed bound)",
        AGGREGATION,
    )
    norm_bound_factor: float = knob(
        10.0,
        "reject replies whose update norm exceeds this many times a reference: the median of the round's "
        "norms and the last round's reference, which starts at the initial adapter's norm, so it holds with "
        "two replies a round and one huge norm never becomes the reference (0 = off)",
        AGGREGATION,
    )
    max_weight_share: float = knob(
        0.5,
        "largest share of a round's total weight one client may get when the "
        "server cannot check its example count against the partition it holds",
        AGGREGATION,
    )
    # Privacy
    clip_norm: float = knob(
        0.0,
        "clip each decoded update to this L2 norm before aggregation (Flower's "
        "server-side fixed clipping; 0 = off); with --dp-noise: central DP",
        PRIVACY,
    )
    dp_noise: float = knob(
        0.0,
        "noise multiplier of Flower's central DP wrapper (needs --clip-norm or --adaptive-clipping; 0 = no noise)",
        PRIVACY,
    )
    adaptive_clipping: bool = knob(
        False,
        "Flower's server-side adaptive clipping (initial norm: --clip-norm, or 0.1) instead of a fixed norm",
        PRIVACY,
    )
    dp_delta: float = knob(1e-5, "delta of the (epsilon, delta) privacy figures reported with --dp-noise", PRIVACY)
    # Local training
    local_steps: int = knob(0, "optimizer steps per client per round", LOCAL_TRAINING)
    batch_size: int = knob(16, "batch size of local training", LOCAL_TRAINING)
    lr: float = knob(
        0.0,
        "local learning rate (0 = the method's default, chosen on SST-2: see docs/results.md; with "
        "--lr-schedule cosine: its value in round 1)",
        LOCAL_TRAINING,
    )
    lr_schedule: str = knob(
        "constant",
        "local learning rate across rounds: constant, or cosine from --lr to --lr-min (FlowerTune's schedule)",
        LOCAL_TRAINING,
        LR_SCHEDULES,
    )
    lr_min: float = knob(0.0, "last-round learning rate of the cosine schedule", LOCAL_TRAINING)
    local_opt: str = knob(
        "adamw",
        "`adamw`, or `sgd` (momentum 0.9): SGD's step follows the gradient, so a "
        "client with ≈ 0 loss barely moves; AdamW normalises every step",
        LOCAL_TRAINING,
        LOCAL_OPTS,
    )
    local_loss: str = knob(
        "ce",
        "`ce`, or `logit-adjusted`: each client adds log of its own label "
        "distribution to the logits while training (FedLC-style), so label-skewed clients "
        "fit the class-balanced classifier; prediction unchanged",
        LOCAL_TRAINING,
        LOCAL_LOSSES,
    )
    # Edge devices (simulation): device profiles, simulated time, Ray resources
    devices: str = knob(
        "",
        "device profile of each simulated client, drawn per seed from a mix: a built-in "
        "(phones-4g, iot-lte-m, laptops-wifi, datacenter) or a .toml/.json file (docs/devices.md); "
        "each round then gets a simulated time from its real bytes and measured compute ('' = off)",
        EDGE,
    )
    over_select: float = knob(
        0.0,
        "sample ceil(k·(1+F)) clients and aggregate the first k to finish in simulated "
        "time (Bonawitz et al.: 0.3); needs --devices (0 = off)",
        EDGE,
    )
    round_deadline: float = knob(
        0.0,
        "simulated seconds a round waits: later updates are discarded and counted "
        "late and failed; needs --devices (0 = no deadline)",
        EDGE,
    )
    client_cpus: float = knob(1.0, "CPUs Ray reserves for each simulated client (parallel clients = CPUs / this)", EDGE)
    client_gpus: float = knob(0.0, "GPUs Ray reserves for each simulated client (0.25: four share a GPU)", EDGE)
    max_actors: int = knob(
        0,
        "at most this many clients train at once on this machine (0 = as many as the CPUs "
        "allow; not with --ray-address)",
        EDGE,
    )
    ray_address: str = knob(
        "",
        "attach to a running Ray cluster (`ray start --head`), e.g. 127.0.0.1:6379, "
        "instead of starting Ray here ('' = start one)",
        EDGE,
    )
    # Output
    out: str = knob("results/flwr-run", "results folder (`fedkron sim`: results/<task>-<method>-<codec>)", OUTPUT)
    overwrite: bool = knob(
        False, "replace a run already in the results folder (without it, such a folder is refused)", OUTPUT
    )
    save_every: int = knob(
        0,
        "keep the global adapter of every N-th round as adapters/round-NNN.safetensors (0 = off; "
        "`fedkron export --round N` reads one)",
        OUTPUT,
    )
    resume: bool = knob(False, "continue from the newest checkpoint in `out`", OUTPUT, cli=False)
    client_state_dir: str = knob(
        "",
        "where clients keep error-feedback residuals per round ('' = in the node's Flower context)",
        OUTPUT,
        cli=False,
    )

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from hyphen- or underscore-keyed values (Flower run config, ConfigRecord, config.json)."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in {
            RENAMED_KEYS.get(k, k): v for k, v in ((k.replace("-", "_"), v) for k, v in values.items())
        }.items():
            if key not in known:
                unknown.append(key.replace("_", "-"))
                continue
            kwargs[key] = _coerce(known[key], value)
        if unknown:
            raise ConfigError(f"unknown run-config keys: {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def to_record(self) -> dict[str, Any]:
        """Hyphen-keyed scalars, fit for a Flower ConfigRecord or ``--run-config``."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def resolved(self) -> RunConfig:
        """Fill task defaults for fields left at 0 and validate; returns a new config."""
        cfg = dataclasses.replace(self)
        defaults = TASK_DEFAULTS.get(cfg.task, TASK_DEFAULTS["instruct" if cfg.task == "instruct" else "sst2"])
        for name in TASK_DEFAULTED:
            if getattr(cfg, name) == 0:
                setattr(cfg, name, defaults[name])
        if cfg.eval_samples == -1:
            cfg.eval_samples = defaults["eval_samples"]
        method = METHOD_DEFAULTS.get(cfg.method, METHOD_DEFAULTS["lora"])
        cfg.rank = cfg.rank or method["rank"]
        cfg.aggregation = cfg.aggregation or method["aggregation"]
        cfg.lr = cfg.lr or method["lr"][cfg.aggregation]
        cfg.validate()
        return cfg

    def sampled_per_round(self) -> int:
        """Clients trained each round (the seeded sample of ``fraction`` of them, at least one)."""
        return max(1, int(round(self.clients * self.fraction)))

    def round_lr(self, server_round: int) -> float:
        """The local learning rate of a round (FlowerTune's cosine annealing, or constant)."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * (server_round - 1) / self.rounds))

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every value; raise one ConfigError listing all problems."""
        validate(self)

    def codec_options(self, codec: str) -> dict[str, Any]:
        """Options of ``fedkron.compression.get_codec(codec, ...)`` for this run: the block size (when
        not the codec's default) and double quantization (4-bit codecs only)."""
        options: dict[str, Any] = {"block_size": self.block_size} if self.block_size and codec in BLOCK_SIZES else {}
        if codec in DOUBLE_QUANT_CODECS:
            options["double_quant"] = self.double_quant
        return options


# Keys renamed since 0.1 (older results folders' config.json, older Flower run configs): read until 0.3.
RENAMED_KEYS = {"quant": "uplink"}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Coerce Flower/CLI values (ints for floats, 'true' strings) to the field's type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"run-config key {flag(f.name)!r}: cannot read {value!r} as {kind}") from None
    return value


def default_data_dir() -> str:
    """``$FEDKRON_DATA_DIR``, else ``../shared/data`` beside the repo when it exists, else ''."""
    env = os.environ.get("FEDKRON_DATA_DIR")
    if env:
        return env
    guess = Path(__file__).resolve().parents[3] / "shared" / "data"
    return str(guess) if guess.is_dir() else ""
