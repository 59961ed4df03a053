"""Everything a run needs, checked before Ray or a SuperLink starts: one clear line per problem.

A bad value found after Ray has started costs the user 20-60 s and a traceback; found here it
costs a second. The checks read the model's config and build it on the ``meta`` device (no
weights, no memory) with the adapters injected, load and partition the task's data as the
clients will (cached for the run), and make sure the results folder can be written without
losing an earlier run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

from fedkron.adapters import inject
from fedkron.data import check_task_data, resolve_source
from fedkron.data.client_data import model_shape, task_spec
from fedkron.data.lm_rows import instruction_splits
from fedkron.models import TINY_BERT, adapter_config, is_language_model, minilm_path, resolved_device
from fedkron.models.causal_lm import (
    ALIASES,
    ModelLoadError,
    check_model_source,
    lm_adapter_config,
    resolve_model_source,
)
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.checkpoint import resume_problems
from fedkron.server.init_adapter import init_adapter_problems, shape_problems
from fedkron.server.results import write_json

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "ledger.csv", "accuracy_and_mb.png", "timing.csv")
RUN_FOLDERS = ("checkpoint", "client-state", "adapter")
BUILTIN_MODELS = ("minilm-l6", "tiny-bert")
MIN_FREE_BYTES = 1 << 20  # a run's config, metrics, summary and first checkpoint: at least this much room
PROBE_BYTES = 16 << 10  # written and fsynced: a folder that takes these bytes takes the small files too
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def preflight(cfg: RunConfig, *, check_data: bool = True) -> None:
    """Raise one :class:`ConfigError` naming every problem of a resolved ``cfg`` (one line when there
    is one problem). When the results folder itself is fine and holds no run, it gets a
    ``summary.json`` saying why the run did not start; a folder holding a run is left as it was."""
    folder_problems = output_problems(cfg)
    problems = folder_problems + task_problems(cfg) + model_problems(cfg)
    if check_data and not problems:
        problems += data_problems(cfg)
    if problems:
        if not folder_problems and not cfg.resume:
            _failed_summary(cfg, problems)
        if len(problems) == 1:
            raise ConfigError(f"cannot start the run: {problems[0]}")
        raise ConfigError("cannot start the run:\n  - " + "\n  - ".join(problems))


def _failed_summary(cfg: RunConfig, problems: list[str]) -> None:
    """The failed-start summary, only into a folder that holds no run: over a finished run (refused
    ``--overwrite``) it would leave that run's config, metrics and checkpoint under a "failed" summary."""

    out = Path(cfg.out)
    if _holds_run_files(out):
        return
    try:
        write_json(
            out / "summary.json",
            {
                "method": cfg.method,
                "task": cfg.task,
                "model": cfg.model,
                "status": "failed: " + "; ".join(problems),
                "rounds_completed": 0,
            },
        )
    except OSError:  # the disk filled since the probe: the error line still says why
        pass


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoint"))


def _holds_run_files(folder: Path) -> bool:
    """Any run file or folder besides the summary.json of an earlier failed start (which may be replaced)."""
    if any((folder / name).exists() for name in RUN_FILES + RUN_FOLDERS if name != "summary.json"):
        return True
    summary = folder / "summary.json"
    if not summary.exists():
        return False
    try:
        saved = json.loads(summary.read_text())
    except (OSError, ValueError):
        return True  # not ours to judge: keep it
    return not (isinstance(saved, dict) and saved.get("rounds_completed") == 0)


def output_problems(cfg: RunConfig) -> list[str]:
    """The results folder must be writable, have room for a run's files, and must not hold a run
    that this one would replace, unless asked (``--overwrite``) or continued (``--resume``)."""

    out = Path(cfg.out)
    if cfg.resume:
        return resume_problems(cfg)
    if holds_a_run(out) and not cfg.overwrite:
        return [
            f"results folder {out} holds a run; pass --overwrite to replace it, --resume to continue it, "
            "or choose another --out"
        ]
    return write_problems(out)


def write_problems(out: Path, leave_no_trace: bool = False) -> list[str]:
    """``out`` can be made, written (a probe of PROBE_BYTES, fsynced) and has room for a run's files.
    ``leave_no_trace``: the folders the probe made are removed again (a grid checks every run's
    folder before any starts; a refused grid must not leave empty run folders behind)."""
    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe_write(out)
        free = shutil.disk_usage(out).free
    except OSError as err:
        return [f"results folder {out} cannot be written: {err.strerror or err}"]
    finally:
        for folder in made if leave_no_trace else []:  # deepest first; a folder others wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
    if free < MIN_FREE_BYTES:
        return [
            f"results folder {out}: its disk has {free // 1024} KiB free; a run needs at least "
            f"{MIN_FREE_BYTES // 1024} KiB for its config, metrics and checkpoints"
        ]
    return []


def _probe_write(folder: Path) -> None:
    """Write PROBE_BYTES and fsync them (an empty file fits on a 100 %-full disk; these bytes do not),
    then remove the probe whatever happened."""
    probe = folder / f".write-test-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        probe.unlink(missing_ok=True)


def task_problems(cfg: RunConfig) -> list[str]:
    """The task can be built: for ``--task custom`` its files are read and their labels counted here,
    so a bad file is one line naming it (and its line), not a traceback from the model check."""
    if cfg.task != "custom":
        return []
    try:
        task_spec(cfg)
    except Exception as err:  # a bad file, a missing one, an unreachable hub dataset: one line
        return [_one_line(err)]
    return []


def _one_line(err: BaseException) -> str:
    """An error as one line of the report, without the module prefix the data layer puts on it."""
    text = str(err).strip().splitlines()
    return text[0].removeprefix("fedkron.data: ") if text else type(err).__name__


def clear_run(folder: Path) -> None:
    """Remove what an earlier run left in ``folder`` (``--overwrite``), and nothing else."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)


def model_problems(cfg: RunConfig) -> list[str]:
    """The model can be found, holds loadable weights, and the adapters fit it: built on the meta
    device, no weights read."""

    if cfg.model not in BUILTIN_MODELS:
        try:
            check_model_source(cfg.model)
            language_model = is_language_model(cfg.model)
        except (ModelLoadError, OSError, ValueError) as err:
            return [f"model {cfg.model!r} cannot be loaded: {str(err).splitlines()[0]}"]
        weights = weights_problems(cfg.model)
        if weights:
            return weights
        if language_model:
            return lm_problems(cfg)
    if cfg.base_quant != "none":
        return [f"base-quant {cfg.base_quant}: 4/8-bit bases are for language models ({cfg.model} is not one)"]
    if cfg.task == "instruct":
        return ["task instruct needs a language model (e.g. --model smollm2-135m)"]
    config, problem = _encoder_config(cfg)
    if problem:
        return [problem]
    try:
        num_labels, multiple_choice = model_shape(cfg)
    except Exception:  # noqa: BLE001 - a task that cannot be built: task_problems has reported it
        return []
    return _adapter_fit_problems(cfg, config, num_labels, multiple_choice)


def weights_problems(model: str) -> list[str]:
    """A local model folder must hold safetensors weights: a pickle checkpoint (pytorch_model.bin)
    would be refused only after Ray has started, and fedkron never unpickles (a pickle runs code)."""

    folder = Path(model).expanduser()
    if model in BUILTIN_MODELS or model in ALIASES or not folder.is_dir():
        return []  # a built-in, an alias (converted to safetensors) or a hub id (not on disk here)
    names = sorted(p.name for p in folder.iterdir())
    if any(name.endswith(".safetensors") for name in names):
        return []
    pickles = [name for name in names if name.endswith(PICKLE_WEIGHTS)]
    if pickles:
        return [
            f"model {model}: only pickle weights ({', '.join(pickles[:3])}); fedkron loads safetensors only and "
            "never unpickles (save the model with save_pretrained(), whose default is model.safetensors)"
        ]
    return [f"model {model}: no weights (expected model.safetensors or *.safetensors shards)"]


def _encoder_config(cfg: RunConfig):
    """(the encoder's config, None) or (None, one line saying why it cannot be read)."""
    from transformers import AutoConfig  # here: transformers takes seconds to import

    try:
        if cfg.model in BUILTIN_MODELS:
            return AutoConfig.from_pretrained(
                minilm_path(), local_files_only=True, **(TINY_BERT if cfg.model == "tiny-bert" else {})
            ), None
        folder = Path(cfg.model).expanduser()
        if folder.exists() or cfg.model.startswith((".", "/", "~")):
            if not (folder / "config.json").is_file():
                return None, f"model {cfg.model}: not a model folder (no config.json there)"
        try:
            return AutoConfig.from_pretrained(cfg.model, local_files_only=True), None
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                return None, f"model {cfg.model!r}: no such folder, and not in the Hugging Face cache (offline)"
            return AutoConfig.from_pretrained(cfg.model), None
    except Exception as err:  # an unreachable hub, a broken config.json: one line
        return None, f"model {cfg.model!r} cannot be loaded: {str(err).splitlines()[0]}"


def _adapter_fit_problems(cfg: RunConfig, config, num_labels: int, multiple_choice: bool) -> list[str]:
    """Build the model with its task head on the meta device and inject the adapters."""
    import torch  # here: torch takes seconds to import
    from transformers import (  # here: transformers takes seconds to import
        AutoModel,
        AutoModelForMultipleChoice,
        AutoModelForSequenceClassification,
    )

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
    return init_adapter_problems(cfg) or (shape_problems(cfg, model) if cfg.init_adapter else [])


def lm_problems(cfg: RunConfig) -> list[str]:
    """A language model: its adapters fit (meta device, from its config) and the settings suit it."""
    import torch  # here: torch takes seconds to import
    from transformers import AutoConfig, AutoModelForCausalLM  # here: transformers takes seconds to import

    problems = []
    if cfg.mc_head != "cross":
        problems.append("mc-head applies to encoders; a language model scores the choices itself")
    if cfg.local_loss != "ce":
        problems.append(
            f"local-loss {cfg.local_loss} adjusts a classification head's logits; a language model "
            "trains on its answer tokens (use --local-loss ce)"
        )
    if cfg.base_quant != "none" and resolved_device(cfg) == "cpu":
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
    return problems + (init_adapter_problems(cfg) or (shape_problems(cfg, model) if cfg.init_adapter else []))


def data_problems(cfg: RunConfig) -> list[str]:
    """Load and partition the training data as the clients will (a bad file, too few rows)."""

    try:
        spec = task_spec(cfg)
        if spec is None:  # instruction files
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
