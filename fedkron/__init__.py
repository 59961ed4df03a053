"""fedkron: federated fine-tuning of transformers with Kronecker adapters on Flower.

Data flow: adapters → compression → protocol → client / strategies → server → sim.
"""

import logging
import os
import warnings

__version__ = "0.1.0"
VERBOSE_ENV = "FEDKRON_VERBOSE"  # set by --verbose; inherited by Ray actors and ClientApp processes


class _DropExpected(logging.Filter):
    """Flower's notice that it stops a simulation's actors, repeated by every actor at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Manually terminating" not in record.getMessage()


if not os.environ.get(VERBOSE_ENV):
    # Third-party notices every process (each Ray actor) would repeat, about things that work as
    # intended here; --verbose shows them again.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # optional CPU kernel absent
    logging.getLogger("flwr").addFilter(_DropExpected())
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning)
