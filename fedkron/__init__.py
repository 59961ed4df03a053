"""fedkron: federated fine-tuning of transformers with Kronecker adapters on Flower.

Data flow: adapters → compression → client → strategies → server → sim.
"""

__version__ = "0.1.0"
