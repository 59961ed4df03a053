"""fedkron: federated fine-tuning of transformers with Kronecker adapters on Flower.

Data flow: adapters → compression → protocol → client / strategies → server → sim. The run
configuration (:mod:`fedkron.runconfig`) is read by every layer; local training lives in
:mod:`fedkron.training`, the tensors a client trains on are built in :mod:`fedkron.data.client_data`.
Importing the package changes no logging or warning filter (:mod:`fedkron.logs` does, from the entry points).
"""

__version__ = "0.1.0"
