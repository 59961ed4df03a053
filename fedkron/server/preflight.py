"""Everything a run needs, checked before Ray or a SuperLink starts: one clear line per problem.

A bad value found after Ray has started costs the user 20-60 s and a traceback; found here it
costs a second. The checks read the model's config and build it on the ``meta`` device (no
weights, no memory) with the adapters injected, load and partition the task's data as the
clients will (cached for the run), and make sure the results folder can be written without
losing an earlier run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from fedkron.data.client_data import model_shape, task_spec
from fedkron.runconfig.fields import ConfigError, RunConfig

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "ledger.csv", "accuracy_and_mb.png", "timing.csv")
RUN_FOLDERS = ("checkpoint", "client-state", "adapter")


def preflight(cfg: RunConfig, *, check_data: bool = True) -> None:
    """Raise one :class:`ConfigError` naming every problem of a resolved ``cfg``. When the results
    folder itself is fine (writable, no earlier run in it), it gets a ``summary.json`` saying why
    the run did not start."""
    folder_problems = output_problems(cfg)
    problems = folder_problems + model_problems(cfg)
    if check_data and not problems:
        problems += data_problems(cfg)
    if problems:
        if not folder_problems and not cfg.resume:
            _failed_summary(cfg, problems)
        raise ConfigError("cannot start the run:\n  - " + "\n  - ".join(problems))


def _failed_summary(cfg: RunConfig, problems: list[str]) -> None:
    from fedkron.server.results import write_json

    write_json(
        Path(cfg.out) / "summary.json",
        {
            "method": cfg.method,
            "task": cfg.task,
            "model": cfg.model,
            "status": "failed: " + "; ".join(problems),
            "rounds_completed": 0,
        },
    )


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoint"))


def output_problems(cfg: RunConfig) -> list[str]:
    """The results folder must be writable and must not hold a run that this one would replace,
    unless asked (``--overwrite``) or continued (``--resume``)."""
    from fedkron.server.checkpoint import resume_problems

    out = Path(cfg.out)
    if cfg.resume:
        return resume_problems(cfg)
    if holds_a_run(out) and not cfg.overwrite:
        return [
            f"results folder {out} holds a run; pass --overwrite to replace it, --resume to continue it, "
            "or choose another --out"
        ]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return [f"results folder {out} cannot be written: {err.strerror or err}"]
    return []


def clear_run(folder: Path) -> None:
    """Remove what an earlier run left in ``folder`` (``--overwrite``), and nothing else."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)


def model_problems(cfg: RunConfig) -> list[str]:
    """The model can be found, and the adapters fit it: built on the meta device, no weights."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForMultipleChoice, AutoModelForSequenceClassification

    from fedkron.adapters import inject
    from fedkron.models import TINY_BERT, adapter_config, is_language_model, minilm_path
    from fedkron.models.causal_lm import ModelLoadError, check_model_source

    if cfg.model not in ("minilm-l6", "tiny-bert"):
        try:
            check_model_source(cfg.model)
            language_model = is_language_model(cfg.model)
        except (ModelLoadError, OSError, ValueError) as err:
            return [f"model {cfg.model!r} cannot be loaded: {str(err).splitlines()[0]}"]
        if language_model:
            return lm_problems(cfg)
    if cfg.base_quant != "none":
        return [f"base-quant {cfg.base_quant}: 4/8-bit bases are for language models ({cfg.model} is not one)"]
    if cfg.task == "instruct":
        return ["task instruct needs a language model (e.g. --model smollm2-135m)"]
    try:
        if cfg.model in ("minilm-l6", "tiny-bert"):
            config = AutoConfig.from_pretrained(
                minilm_path(), local_files_only=True, **(TINY_BERT if cfg.model == "tiny-bert" else {})
            )
        else:
            folder = Path(cfg.model).expanduser()
            if folder.exists() or cfg.model.startswith((".", "/", "~")):
                if not (folder / "config.json").is_file():
                    return [f"model {cfg.model}: not a model folder (no config.json there)"]
            try:
                config = AutoConfig.from_pretrained(cfg.model, local_files_only=True)
            except OSError:
                if os.environ.get("HF_HUB_OFFLINE") == "1":
                    return [f"model {cfg.model!r}: no such folder, and not in the Hugging Face cache (offline)"]
                config = AutoConfig.from_pretrained(cfg.model)
    except Exception as err:  # an unreachable hub, a broken config.json: one line
        return [f"model {cfg.model!r} cannot be loaded: {str(err).splitlines()[0]}"]
    num_labels, multiple_choice = model_shape(cfg)
    dual = multiple_choice and cfg.mc_head == "dual"
    auto = AutoModel if dual else AutoModelForMultipleChoice if multiple_choice else AutoModelForSequenceClassification
    if not multiple_choice:
        config.num_labels = num_labels
    try:
        with torch.device("meta"):
            model = auto.from_config(config)
            base = sum(p.numel() for p in model.parameters())
            inject(model, adapter_config(cfg))
            adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    except Exception as err:
        return [f"{cfg.method} rank {cfg.rank} ({cfg.shape_policy} shapes) does not fit {cfg.model}: {err}"]
    if adapter > base:
        return [f"rank {cfg.rank}: the adapter ({adapter:,} values) would be larger than the model ({base:,})"]
    return []


def lm_problems(cfg: RunConfig) -> list[str]:
    """A language model: its adapters fit (meta device, from its config) and the settings suit it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedkron.adapters import inject
    from fedkron.models import resolved_device
    from fedkron.models.causal_lm import lm_adapter_config, resolve_model_source

    problems = []
    if cfg.mc_head != "cross":
        problems.append("mc-head applies to encoders; a language model scores the choices itself")
    if cfg.local_loss != "ce":
        problems.append(
            f"local-loss {cfg.local_loss} adjusts a classification head's logits; a language model "
            "trains on its answer tokens (use --local-loss ce)"
        )
    if cfg.base_quant != "none" and resolved_device(cfg) == "cpu":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("base-quant needs bitsandbytes")
    try:
        source = resolve_model_source(cfg.model)
        config = AutoConfig.from_pretrained(source, local_files_only=os.path.isdir(source))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
            inject(
                model, lm_adapter_config(cfg.method, cfg.rank, cfg.alpha, cfg.targets, shape_policy=cfg.shape_policy)
            )
    except Exception as err:
        problems.append(f"{cfg.method} rank {cfg.rank} does not fit {cfg.model}: {str(err).splitlines()[0]}")
    return problems


def data_problems(cfg: RunConfig) -> list[str]:
    """Load and partition the training data as the clients will (a bad file, too few rows)."""
    from fedkron.data import check_task_data, resolve_source

    try:
        spec = task_spec(cfg)
        if spec is None:  # instruction files
            from fedkron.data.lm_rows import instruction_splits

            splits = instruction_splits(cfg.train_file, cfg.eval_file or None, cfg.seed)
            if len(splits["train"]) < cfg.clients:
                return [
                    f"{cfg.train_file} has {len(splits['train'])} instructions, fewer than the {cfg.clients} "
                    "clients asked for"
                ]
            return []
        if resolve_source(spec, cfg.data_dir or None, "auto")[0] == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
            return [f"task {cfg.task}: no local copy (give --data-dir) and the hub is offline"]
        check_task_data(spec, cfg.data_dir or None, cfg.clients, cfg.partition, cfg.seed, alpha=cfg.dirichlet_alpha)
    except Exception as err:
        return [str(err).splitlines()[0] if str(err) else type(err).__name__]
    return []
