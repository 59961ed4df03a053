"""Every RunConfig setting, for an encoder (tiny-bert) and a decoder LM (a tiny Llama folder), is
honoured or refused: changed from its default to a valid other value, either what runs changes
(observed for real: the worker's train / evaluate reply, the model it builds, the Flower strategy,
the wrapper's rounds, the Ray backend, the results folder) or ``RunConfig.resolved()`` / preflight
refuses it with a message naming the flag. A field added to RunConfig without a row here fails
:func:`test_every_field_is_classified_for_every_family`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedkron.runconfig.choices import ConfigError, flag
from fedkron.runconfig.fields import RunConfig

pytestmark = pytest.mark.slow  # ~120 cases of tiny models, 1-2 steps each


@dataclass(frozen=True)
class Case:
    change: dict  # the setting's other value (and what that value itself needs, e.g. a train file)
    observe: tuple[str, ...]  # where the change shows (keys of OBSERVERS); () = refused
    context: dict = field(default_factory=dict)  # a run where the setting applies (base overrides)


def refused(change: dict, context: dict | None = None) -> Case:
    return Case(change, (), context or {})


CUSTOM = {"task": "custom", "train_file": "@csv", "data_dir": ""}
MULTIPLE_CHOICE = {"task": "arc-easy", "data_dir": "@arc"}

# Where each observation is made: the component that reads the setting (server-side ones named).
COMPONENTS = {
    "train": "fedkron.client.worker.handle_train: reply (update bytes, metrics) and the state it keeps",
    "evaluate": "fedkron.client.worker.handle_evaluate: reply",
    "build": "fedkron.client.worker.cached_model → fedkron.models.build_model: the built model",
    "placement": "fedkron.models.resolved_device (build_model's .to(), the worker's peak memory)",
    "loader": "fedkron.models.causal_lm.load_causal_lm's arguments (from build_language_model)",
    "strategy": "fedkron.strategies.registry.build_strategy: the Flower strategy and its DP wrapper",
    "federation": "fedkron.server.federation.run_federation: the FedKron wrapper and its starting adapter, "
    "run_rounds, results folder",
    "configure_train": "fedkron.strategies.wrapper.FedKron.configure_train: the nodes a round trains",
    "configure_evaluate": "fedkron.strategies.wrapper.FedKron.configure_evaluate: the nodes that evaluate",
    "broadcast": "fedkron.strategies.wrapper.FedKron._broadcast: round 2's broadcast config",
    "aggregate": "fedkron.strategies.wrapper.FedKron.aggregate_train: the reply checks and weights",
    "backend": "fedkron.sim.simulate.backend_config: Ray's resources",
    "output": "fedkron.server.preflight.output_problems: a results folder holding a run",
    "round_adapters": "fedkron.server.federation.FederationRun.evaluate_round: the round adapters it keeps",
}

COMMON: dict[str, Case] = {
    "task": Case(CUSTOM, ("train",)),
    "data_dir": Case({"data_dir": "@sst2b"}, ("train",)),
    "train_file": Case({"train_file": "@csv2"}, ("train",), CUSTOM),
    "eval_file": Case({"eval_file": "@csv_eval"}, ("train",), CUSTOM),
    "text_column": Case({"text_column": "sentence"}, ("train",), CUSTOM),
    "text_pair_column": Case({"text_pair_column": "text2"}, ("train",), CUSTOM),
    "label_column": Case({"label_column": "y"}, ("train",), CUSTOM),
    "max_length": Case({"max_length": 8}, ("train",)),
    "eval_samples": Case({"eval_samples": 3}, ("evaluate",)),
    "device": Case({"device": "cpu"}, ("placement",)),
    "gradient_checkpointing": Case({"gradient_checkpointing": True}, ("build",)),
    "method": Case({"method": "lora"}, ("train",)),
    "rank": Case({"rank": 2}, ("train",)),
    "alpha": Case({"alpha": 4.0}, ("train",)),
    "shape_policy": Case({"shape_policy": "peft"}, ("train",)),
    "uplink": Case({"uplink": "int8"}, ("train",)),
    "downlink": Case({"downlink": "int8"}, ("federation",)),
    "block_size": Case({"block_size": 128}, ("train",)),
    "double_quant": Case({"double_quant": False}, ("train",)),
    "error_feedback": Case({"error_feedback": False}, ("train", "federation")),
    "clients": Case({"clients": 3}, ("federation",)),
    "rounds": Case({"rounds": 3}, ("federation",)),
    "fraction": Case({"fraction": 0.5}, ("configure_train",)),
    "fraction_evaluate": Case({"fraction_evaluate": 0.5}, ("configure_evaluate",)),
    "central_eval": Case({"central_eval": False, "fraction_evaluate": 0.5}, ("federation",)),
    "min_replies": Case({"min_replies": 2}, ("federation",)),
    "partition": Case({"partition": "dirichlet"}, ("train",)),
    "dirichlet_alpha": Case({"dirichlet_alpha": 0.1}, ("train",), {"partition": "dirichlet"}),
    "round_timeout": Case({"round_timeout": 60.0}, ("federation",)),
    "seed": Case({"seed": 1}, ("train",)),
    "strategy": Case({"strategy": "fedprox"}, ("train", "strategy")),
    "aggregation": Case({"aggregation": "exact"}, ("train",)),
    "server_lr": Case({"server_lr": 0.5}, ("strategy",)),
    "server_momentum": Case({"server_momentum": 0.5}, ("strategy",), {"strategy": "fedavgm"}),
    "proximal_mu": Case({"proximal_mu": 0.5}, ("train", "strategy"), {"strategy": "fedprox"}),
    "trim_fraction": Case({"trim_fraction": 0.3}, ("strategy",), {"strategy": "fedtrimmedavg"}),
    "num_malicious": Case({"num_malicious": 1}, ("strategy",), {"strategy": "krum", "clients": 5}),
    "max_update_norm": Case({"max_update_norm": 5.0}, ("aggregate",)),
    "norm_bound_factor": Case({"norm_bound_factor": 0.0}, ("aggregate",), {"clients": 4}),
    "max_weight_share": Case({"max_weight_share": 0.9}, ("aggregate",)),
    "clip_norm": Case({"clip_norm": 1.0}, ("strategy",)),
    "dp_noise": Case({"dp_noise": 0.5}, ("strategy",), {"clip_norm": 1.0}),
    "adaptive_clipping": Case({"adaptive_clipping": True}, ("strategy",)),
    "dp_delta": Case({"dp_delta": 1e-6}, ("strategy",), {"clip_norm": 1.0, "dp_noise": 0.5}),
    "local_steps": Case({"local_steps": 3}, ("train",)),
    "batch_size": Case({"batch_size": 2}, ("train",)),
    "lr": Case({"lr": 0.05}, ("train",)),
    "lr_schedule": Case({"lr_schedule": "cosine"}, ("broadcast",)),
    "lr_min": Case({"lr_min": 1e-4}, ("broadcast",), {"lr_schedule": "cosine"}),
    "local_opt": Case({"local_opt": "sgd"}, ("train",)),
    "devices": Case({"devices": "phones-4g"}, ("federation",)),
    "over_select": Case({"over_select": 0.5}, ("federation",), {"devices": "phones-4g"}),
    "round_deadline": Case({"round_deadline": 30.0}, ("federation",), {"devices": "phones-4g"}),
    "client_cpus": Case({"client_cpus": 2.0}, ("backend",)),
    "client_gpus": Case({"client_gpus": 0.5}, ("backend",)),
    "max_actors": Case({"max_actors": 97}, ("backend",)),  # 97 × 1 CPU: not this machine's count
    "ray_address": Case({"ray_address": "127.0.0.1:6379"}, ("backend",)),
    "out": Case({"out": "@results/other"}, ("federation",)),
    "overwrite": Case({"overwrite": True}, ("output",)),
    "resume": Case({"resume": True}, ("output",)),
    "save_every": Case({"save_every": 1}, ("round_adapters",)),
    "client_state_dir": Case({"client_state_dir": "@state"}, ("train",)),
}
SETTINGS: dict[str, dict[str, Case]] = {
    "encoder": {
        **COMMON,
        "model": Case({"model": "minilm-l6"}, ("train",)),
        "mc_head": Case({"mc_head": "dual"}, ("train",), MULTIPLE_CHOICE),
        "base_quant": refused({"base_quant": "nf4"}),
        "targets": Case({"targets": "query,value"}, ("train",)),
        "local_loss": Case({"local_loss": "logit-adjusted"}, ("train",)),
        "init_adapter": Case({"init_adapter": "@encoder_adapter"}, ("federation",)),
    },
    "lm": {
        **COMMON,
        "model": Case({"model": "@gpt2"}, ("train",)),
        "mc_head": refused({"mc_head": "dual"}, MULTIPLE_CHOICE),
        "base_quant": Case({"base_quant": "nf4"}, ("loader",)),
        "targets": Case({"targets": "q_proj,v_proj"}, ("train",)),
        "local_loss": refused({"local_loss": "logit-adjusted"}),
        "init_adapter": Case({"init_adapter": "@lm_adapter"}, ("federation",)),
    },
}
CASES = [(family, name) for family in SETTINGS for name in sorted(SETTINGS[family])]


# --- the files the runs read ------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _reviews(n: int, offset: int = 0) -> list[dict]:
    words = ["great fun", "dull and slow", "a fine cast", "too long", "warm and witty", "flat"]
    return [
        {
            "text": f"{words[(i + offset) % 6]} film number {i + offset}, seen twice by the whole family",
            "sentence": f"the {words[(i * 5 + offset) % 6]} story {i}",
            "text2": f"seen on day {i % 7}",
            "label": "pos" if (i + offset) % 2 else "neg",
            "y": "yes" if i % 3 == 0 else "no",
        }
        for i in range(n)
    ]


def _arc_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "question": f"Which colour is thing number {i}?",
            "choices": {"text": ["blue", "red", "green", "white"], "label": ["A", "B", "C", "D"]},
            "answerKey": "ABCD"[i % 4],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: one intra-op thread is ~50× faster than oversubscribed ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    from llm_fixtures import bpe_tokenizer, save_folder, tiny_gpt2, tiny_llama

    root = tmp_path_factory.mktemp("settings")
    for folder, offset in (("data", 3), ("data-b", 4)):  # SST-2 laid out as in shared/data, 60 + 20 rows
        sst2 = root / folder / "sst2"
        sst2.mkdir(parents=True)
        for name, n in (("train.tsv", 60), ("dev.tsv", 20)):
            rows = _reviews(n, offset=offset)
            lines = ["sentence\tlabel"] + [f"{r['text']}\t{int(r['label'] == 'pos')}" for r in rows]
            (sst2 / name).write_text("\n".join(lines) + "\n")
    arc = root / "arc" / "arc_easy"
    arc.mkdir(parents=True)
    for name in ("train.json", "validation.json", "test.json"):
        (arc / name).write_text(json.dumps(_arc_rows(24)))
    found = {
        "@llama": save_folder(tiny_llama(), bpe_tokenizer(), root / "llama"),
        "@gpt2": save_folder(tiny_gpt2(), bpe_tokenizer(), root / "gpt2"),
        "@csv": _write_csv(root / "reviews.csv", _reviews(40)),
        "@csv2": _write_csv(root / "reviews2.csv", _reviews(40, offset=1)),
        "@csv_eval": _write_csv(root / "reviews_eval.csv", _reviews(10, offset=5)),
        "@sst2": str(root / "data"),
        "@sst2b": str(root / "data-b"),
        "@arc": str(root / "arc"),
        "@state": str(root / "client-state"),
        "@results": str(root / "results"),
    }
    for family in SETTINGS:  # a stored adapter of the base run, moved off its seeded init
        found[f"@{family}_adapter"] = _stored_adapter(base_config(family, found), root / f"{family}-adapter")
    return found


def _stored_adapter(cfg: RunConfig, folder: Path) -> str:
    from fedkron.adapters import adapter_state_dict, save_adapter
    from fedkron.data.client_data import model_shape
    from fedkron.models import build_model

    model = build_model(cfg.resolved(), *model_shape(cfg))
    with torch.no_grad():
        for tensor in adapter_state_dict(model).values():
            tensor.add_(0.01)
    save_adapter(model, folder)
    return str(folder)


def _resolve(values: dict, paths: dict[str, str]) -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("@"):
            head, _, tail = value.partition("/")
            value = str(Path(paths[head]) / tail) if tail else paths[head]
        out[key] = value
    return out


def base_config(family: str, paths: dict[str, str], **overrides) -> RunConfig:
    """A tiny run: SST-2 from a 60-row folder, 2 clients, 2 rounds, 2 local steps of 4 rows of 16 tokens."""
    model = "tiny-bert" if family == "encoder" else paths["@llama"]
    values = dict(
        model=model,
        task="sst2",
        data_dir=paths["@sst2"],
        clients=2,
        rounds=2,
        local_steps=2,
        batch_size=4,
        max_length=16,
        eval_samples=6,
        out=str(Path(paths["@results"]) / "out"),
    )
    return RunConfig(**{**values, **_resolve(overrides, paths)})


# --- observers: what runs, for a config ---------------------------------------------------------


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def snapshot(obj, depth: int = 4):
    """The plain values an object holds (numbers, strings, flags, nested objects' values), without
    the run config itself: what a component made of the config, not the config it was given."""
    simple = (int, float, str, bool, type(None))
    out: dict = {"type": type(obj).__name__}
    if depth == 0 or not hasattr(obj, "__dict__"):
        return out
    for key, value in sorted(vars(obj).items()):
        if isinstance(value, RunConfig) or callable(value):
            continue
        if isinstance(value, simple):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, simple) for v in value):
            out[key] = list(value)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.Tensor):
            out[key] = snapshot(value, depth - 1)
    return out


def _fedkron(cfg: RunConfig):
    from fedkron.adapters import adapter_factor_roles
    from fedkron.client import worker
    from fedkron.strategies.registry import build_strategy
    from fedkron.strategies.wrapper import FedKron

    model, init = worker.cached_model(cfg)
    nodes = {100 + i: (i, cfg.clients) for i in range(cfg.clients)}
    return FedKron(build_strategy(cfg), cfg, init, adapter_factor_roles(model), known_partitions=lambda: nodes)


class FakeGrid:
    """The nodes a round may use (partitions known to the wrapper, as in a simulation)."""

    def __init__(self, n: int):
        self.nodes = [100 + i for i in range(n)]

    def get_node_ids(self):
        return list(self.nodes)


def observe_worker(cfg: RunConfig, kind: str, paths) -> tuple:
    """Round 1 of the worker in-process: the server's real broadcast in, the reply's arrays and
    metrics (timings left out) and what the client kept for its next round out."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedkron.client import worker
    from fedkron.protocol import PEAK_MEMORY, TIMINGS

    shutil.rmtree(paths["@state"], ignore_errors=True)
    content = _fedkron(cfg)._broadcast(1, ConfigRecord())
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(), run_config={}
    )
    handler = worker.handle_train if kind == "train" else worker.handle_evaluate
    reply = handler(Message(content, dst_node_id=1, message_type=kind), context).content
    arrays = {
        name: _digest([(k, v.numpy().tobytes() if hasattr(v, "numpy") else v) for k, v in record.items()])
        for name, record in reply.items()
        if name != "metrics"
    }
    metrics = {k: v for k, v in dict(reply["metrics"]).items() if k not in (*TIMINGS, PEAK_MEMORY)}
    kept = sorted(str(p.relative_to(paths["@state"])) for p in Path(paths["@state"]).rglob("*") if p.is_file())
    return arrays, metrics, sorted(context.state.keys()), kept


def observe_build(cfg: RunConfig, paths) -> tuple:
    from fedkron.client import worker

    model, _ = worker.cached_model(cfg)
    checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return checkpointed, [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def observe_placement(cfg: RunConfig, paths) -> str:
    from fedkron.models import resolved_device

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)  # where auto would differ from cpu
        return resolved_device(cfg)


class _Stop(Exception):
    """Ends a probe once the value it looks for was seen."""


def observe_loader(cfg: RunConfig, paths) -> dict:
    from fedkron import models

    seen: dict = {}

    def load(model, **kwargs):
        seen.update(kwargs, model=model)
        raise _Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_causal_lm", load)
        with pytest.raises(_Stop):
            models.build_model(cfg, 0)
    return seen


def observe_strategy(cfg: RunConfig, paths) -> dict:
    from fedkron.strategies.registry import build_strategy

    return snapshot(build_strategy(cfg))


def observe_federation(cfg: RunConfig, paths) -> dict:
    """run_federation up to Flower's round loop: the wrapper it built, the rounds and timeout it
    asks for, whether it loads the central evaluation set, the files it wrote, and where."""
    from fedkron.data.client_data import EvalSet
    from fedkron.server import federation

    results = Path(paths["@results"])
    shutil.rmtree(results, ignore_errors=True)
    seen: dict = {"central_eval": False}

    def rounds(strategy, grid, arrays, first, last, evaluate_fn, timeout):
        seen.update(
            rounds=(first, last, timeout), wrapper=snapshot(strategy), start=_state_digest(strategy.global_state)
        )
        raise _Stop

    def evalset(c):
        seen["central_eval"] = True
        return EvalSet(data={}, num_rows=0, majority_baseline=None, note="")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(federation, "run_rounds", rounds)
        mp.setattr(federation, "eval_data", evalset)
        mp.setattr(federation, "_finish", lambda *args: None)
        with pytest.raises(_Stop):
            federation.run_federation(FakeGrid(cfg.clients), cfg)
    seen["files"] = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    return seen


def _state_digest(state: dict) -> str:
    return _digest([(k, v.numpy().tobytes()) for k, v in sorted(state.items())])


def observe_configure_train(cfg: RunConfig, paths) -> list[int]:
    from flwr.app import ConfigRecord

    from fedkron.strategies.wrapper import to_arrayrecord

    wrapper = _fedkron(cfg)
    messages = wrapper.configure_train(1, to_arrayrecord(wrapper.global_state), ConfigRecord(), FakeGrid(cfg.clients))
    return sorted(m.metadata.dst_node_id for m in messages)


def observe_configure_evaluate(cfg: RunConfig, paths) -> list[int]:
    from flwr.app import ConfigRecord

    from fedkron.strategies.wrapper import to_arrayrecord

    wrapper = _fedkron(cfg)
    messages = wrapper.configure_evaluate(
        1, to_arrayrecord(wrapper.global_state), ConfigRecord(), FakeGrid(cfg.clients)
    )
    return sorted(m.metadata.dst_node_id for m in messages)


def observe_broadcast(cfg: RunConfig, paths) -> dict:
    from flwr.app import ConfigRecord

    from fedkron.protocol import CONFIG, CONFIG_DIGEST

    config = dict(_fedkron(cfg)._broadcast(2, ConfigRecord())[CONFIG])
    return {k: v for k, v in config.items() if k != CONFIG_DIGEST and k.replace("-", "_") not in RUN_FIELDS}


def observe_aggregate(cfg: RunConfig, paths) -> dict:
    """A round of replies, one an outlier (norm 1e6), through aggregate_train: the bound the reply
    check gets, how many replies survive the norm defence, the weight cap they are then given
    (read_reply and capped_weights recorded where they are called; the inner aggregation not run)."""
    from flwr.app import Message, RecordDict

    from fedkron.strategies import wrapper as module

    wrapper = _fedkron(cfg)
    nodes = FakeGrid(cfg.clients).nodes
    wrapper.roster.discover(FakeGrid(cfg.clients))
    norms = {node: 1e6 if i == len(nodes) - 1 else 1.0 for i, node in enumerate(nodes)}
    seen: dict = {}

    def read_reply(msg, expected, codecs, max_update_norm):
        seen["max_update_norm"] = max_update_norm
        node = msg.metadata.src_node_id
        pid = wrapper.roster.reported(node)
        return SimpleNamespace(partition_id=pid, node_id=node, norm=norms[node], num_examples=10, update={}, metrics={})

    def capped(counts, known, share):
        seen.update(kept=len(counts), max_weight_share=share)
        raise _Stop

    asks = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in nodes]
    replies = [Message(RecordDict(), reply_to=ask) for ask in asks]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "read_reply", read_reply)
        mp.setattr(module, "capped_weights", capped)
        with pytest.raises(_Stop):
            wrapper.aggregate_train(1, replies)
    return seen


def observe_backend(cfg: RunConfig, paths) -> dict:
    from fedkron.sim.simulate import backend_config

    return backend_config(cfg)


def observe_output(cfg: RunConfig, paths) -> list[str]:
    """Whether a results folder that holds a run is refused, replaced or continued."""
    from fedkron.server.preflight import output_problems

    out = Path(cfg.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg.to_record()))
    return [p.replace(str(out), "<out>") for p in output_problems(cfg)]


def observe_round_adapters(cfg: RunConfig, paths) -> list[str]:
    """run_federation with Flower's round loop stood in for (each round's evaluation called, scoring
    skipped): the files it keeps under adapters/."""
    from fedkron.server import federation

    results = Path(cfg.out)
    shutil.rmtree(results, ignore_errors=True)

    def rounds(strategy, grid, arrays, first, last, evaluate_fn, timeout):
        for rnd in range(first, last + 1):
            evaluate_fn(rnd, arrays)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(federation, "run_rounds", rounds)
        mp.setattr(federation.FederationRun, "score", lambda self, rnd, state: {})
        mp.setattr(federation, "eval_data", lambda c: None)
        mp.setattr(federation, "_finish", lambda *args: None)
        federation.run_federation(FakeGrid(cfg.clients), cfg)
    folder = results / "adapters"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


OBSERVERS = {
    "train": lambda cfg, paths: observe_worker(cfg, "train", paths),
    "evaluate": lambda cfg, paths: observe_worker(cfg, "evaluate", paths),
    "build": observe_build,
    "placement": observe_placement,
    "loader": observe_loader,
    "strategy": observe_strategy,
    "federation": observe_federation,
    "configure_train": observe_configure_train,
    "configure_evaluate": observe_configure_evaluate,
    "broadcast": observe_broadcast,
    "aggregate": observe_aggregate,
    "backend": observe_backend,
    "output": observe_output,
    "round_adapters": observe_round_adapters,
}
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def refusal(cfg: RunConfig) -> str:
    """What ``resolved()`` and preflight's model checks (the language-model checks included) say."""
    from fedkron.server.preflight import model_problems

    try:
        cfg = cfg.resolved()
    except ConfigError as err:
        return str(err)
    return "\n".join(model_problems(cfg))


_BASELINES: dict[tuple, object] = {}


def observed(kind: str, family: str, cfg: RunConfig, paths) -> object:
    """An observation of a resolved config; the base runs' are kept (several settings share them)."""
    key = (kind, family, json.dumps(cfg.to_record(), sort_keys=True))
    if key in _BASELINES:
        return _BASELINES[key]
    value = OBSERVERS[kind](cfg, paths)
    _BASELINES[key] = value
    return value


# --- the tests ------------------------------------------------------------------------------------


def test_every_field_is_classified_for_every_family():
    """A new RunConfig field must say where it is honoured (or that it is refused), per family."""
    for family, table in SETTINGS.items():
        assert set(table) == RUN_FIELDS, (family, sorted(RUN_FIELDS ^ set(table)))
        for name, case in table.items():
            assert name in case.change, (family, name)
            assert set(case.observe) <= set(OBSERVERS), (family, name, case.observe)
    assert set(OBSERVERS) == set(COMPONENTS)


@pytest.mark.parametrize("family,name", CASES)
def test_each_setting_changes_what_runs_or_is_refused(family, name, paths, flower_identity):
    case = SETTINGS[family][name]
    base = base_config(family, paths, **case.context)
    assert refusal(base) == "", (family, name, refusal(base))  # the run the change is made in is valid
    changed = base_config(family, paths, **{**case.context, **case.change})
    assert getattr(changed, name) != getattr(base, name)
    if not case.observe:
        message = refusal(changed)
        assert flag(name) in message, (family, name, message)
        return
    assert refusal(changed) == "", (family, name, refusal(changed))
    for kind in case.observe:
        before = observed(kind, family, base.resolved(), paths)
        after = OBSERVERS[kind](changed.resolved(), paths)
        assert before != after, f"{family}: --{flag(name)} {getattr(changed, name)!r} changed nothing in {kind}"


def test_observations_are_deterministic(paths, flower_identity):
    """The comparison above is meaningful only if the same config observes the same twice."""
    for family in SETTINGS:
        cfg = base_config(family, paths).resolved()
        for kind in ("train", "federation", "configure_train", "aggregate"):
            assert OBSERVERS[kind](cfg, paths) == OBSERVERS[kind](cfg, paths), (family, kind)


@pytest.mark.parametrize("family", sorted(SETTINGS))
def test_scoped_settings_are_refused_outside_their_runs(family, paths):
    """A setting that only some runs read (a custom task's columns, a strategy's own knob) is refused,
    naming its flag, in a run that would not read it: it is never dropped without a word."""
    from fedkron.runconfig.checks import SCOPED

    scoped = {name for name, _, _ in SCOPED}
    checked = 0
    for name, case in SETTINGS[family].items():
        if name not in scoped or not case.context:
            continue
        message = refusal(base_config(family, paths, **{k: v for k, v in case.change.items() if k == name}))
        assert flag(name) in message and "no effect" in message, (family, name, message)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize(
    "values,name",
    [
        ({"max_weight_share": 0.9, "clip_norm": 1.0, "dp_noise": 0.5}, "max_weight_share"),
        ({"dp_delta": 1e-6, "adaptive_clipping": True, "dp_noise": 0.5}, "dp_delta"),
        ({"dp_delta": 1e-6, "strategy": "fedmedian", "clip_norm": 1.0, "dp_noise": 0.5}, "dp_delta"),
        ({"server_lr": 0.5, "strategy": "krum", "clients": 5}, "server_lr"),
        ({**CUSTOM, "data_dir": "@sst2"}, "data_dir"),
    ],
)
def test_settings_a_run_would_not_read_are_refused(values, name, paths):
    """Cases the walk's base run does not reach: central DP (equal weights; ε accounted only for
    fixed clipping on FedAvg), a strategy without a server step, a custom file beside --data-dir."""
    message = refusal(base_config("encoder", paths, **values))
    assert flag(name) in message and "no effect" in message, message


def test_a_model_built_for_one_custom_file_is_not_served_for_another(tmp_path, flower_identity):
    """Two --train-file's with 2 and 3 labels in one process: each gets its own model, with a head of
    its own size, and the 3-label run trains (a 2-way head would fail on label 2)."""
    from fedkron.client import worker
    from fedkron.data.client_data import model_shape
    from fedkron.models import model_key

    two = _write_csv(tmp_path / "two.csv", [{"text": f"row {i}", "label": ["a", "b"][i % 2]} for i in range(30)])
    three = _write_csv(tmp_path / "three.csv", [{"text": f"row {i}", "label": "abc"[i % 3]} for i in range(30)])
    cfgs = [
        RunConfig(model="tiny-bert", task="custom", train_file=f, clients=2, max_length=16, local_steps=1).resolved()
        for f in (two, three)
    ]
    assert model_key(cfgs[0], *model_shape(cfgs[0])) != model_key(cfgs[1], *model_shape(cfgs[1]))
    heads = []
    for cfg in cfgs:
        model, _ = worker.cached_model(cfg)
        heads.append(model.classifier.out_features)
        data = worker.client_data(cfg, 0, 2)
        worker.train_local(model, data, 1, 4, 1e-3, seed=0)
    assert heads == [2, 3]
    assert worker.cached_model(cfgs[0])[0].classifier.out_features == 2  # and back again
