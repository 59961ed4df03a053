"""Kronecker adapters (Kron-LoRA, KronA) and a LoRA baseline for any Hugging Face transformer.

The first stage of the data flow: ``inject`` wraps frozen linear layers, ``adapter_state_dict``
names exactly what a client trains and sends, ``save_adapter``/``export_peft`` write it out.
"""

from .config import AdapterConfig, AdapterConfigError
from .layers import AdapterLayer, KronALayer, KronLoRALayer, LoRALayer
from .model import (
    AdapterStateError,
    adapter_factor_roles,
    adapter_layers,
    adapter_state_dict,
    inject,
    injected,
    load_adapter_state_dict,
    merge,
    trainable_parameter_count,
    unmerge,
)
from .peft_interop import PeftExportError, export_peft, import_peft
from .shapes import FactorShapeError, KronShape
from .storage import load_adapter, save_adapter
from .targets import TargetError

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterLayer",
    "AdapterStateError",
    "FactorShapeError",
    "KronALayer",
    "KronLoRALayer",
    "KronShape",
    "LoRALayer",
    "PeftExportError",
    "TargetError",
    "adapter_factor_roles",
    "adapter_layers",
    "adapter_state_dict",
    "export_peft",
    "import_peft",
    "inject",
    "injected",
    "load_adapter",
    "load_adapter_state_dict",
    "merge",
    "save_adapter",
    "trainable_parameter_count",
    "unmerge",
]
