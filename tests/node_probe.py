"""A ClientApp that notes which Ray node ran each training message (for the multi-node test)."""

import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedkron.client.worker import handle_query, handle_train


def probe_app(folder: str) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import ray

        node = ray.get_runtime_context().get_node_id()
        with Path(folder, f"node-{os.getpid()}.txt").open("a") as fh:
            fh.write(f"{node} {context.node_config['partition-id']}\n")
        return handle_train(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context)

    return app
