"""The Flower ClientApp: thin handlers over :mod:`fedkron.client.worker`."""

from fedkron.logs import quiet_third_party

# An entry point: every simulated client (Ray actor) imports this module. Quieted before the imports
# below, which load bitsandbytes and torch's compiler (their import-time notices are what it hides).
quiet_third_party()

from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedkron.client.worker import handle_evaluate, handle_query, handle_train  # noqa: E402

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the adapter factors on this node's partition and reply with the encoded update."""
    return handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global adapter on this node's own held-out data (``--fraction-evaluate``)."""
    return handle_evaluate(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (used for seeded client sampling)."""
    return handle_query(msg, context)
