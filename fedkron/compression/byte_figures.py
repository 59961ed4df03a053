"""Three byte figures per Flower message, so savings are reported honestly.

- ``payload``: codec payload bytes (codes + scales + manifest) of every fedkron payload
  the message carries. A payload is found by its manifest entry in a ConfigRecord; its
  code and scale lengths are those the checked manifest declares, which ``decode``
  enforces to equal the arrays actually sent, so for any decodable message this is the
  sum of ``Encoded.nbytes``.
- ``count_bytes``: sum of ``ArrayRecord.count_bytes()`` over the content (array bytes
  incl. ``.npy`` headers, plus key lengths), the figure FlowerTune's leaderboard uses.
- ``serialized``: ``message_to_proto(message).ByteSize()``, the protobuf message size.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedkron.flwr_private import message_to_proto, recorddict_to_proto

from .manifest import declared_sizes, declared_values
from .records import MANIFEST_KEY


def payload_bytes(config_record: ConfigRecord) -> int:
    """Payload bytes declared by the manifest in ``config_record`` (0 when it has none).

    A manifest ``from_records`` already checked is not parsed again (sizes are remembered by
    its bytes); any other is parsed once, linearly.
    """
    if MANIFEST_KEY not in config_record:
        return 0
    manifest_bytes = config_record[MANIFEST_KEY]
    code_bytes, n_scales = declared_sizes(manifest_bytes)
    return len(manifest_bytes) + code_bytes + 4 * n_scales


def payload_values(config_record: ConfigRecord) -> int:
    """Tensor values (adapter parameters) the payload in ``config_record`` carries, as its manifest
    declares them (0 when it has none): the ledger's ``values`` figure."""
    if MANIFEST_KEY not in config_record:
        return 0
    return declared_values(config_record[MANIFEST_KEY])


def content_byte_figures(content: RecordDict) -> dict[str, int]:
    """``payload`` and ``count_bytes`` of a RecordDict, plus its serialized protobuf size."""
    return {
        "payload": sum(payload_bytes(record) for record in content.config_records.values()),
        "count_bytes": sum(record.count_bytes() for record in content.array_records.values()),
        "serialized": recorddict_to_proto(content).ByteSize(),
    }


def message_byte_figures(message: Message) -> dict[str, int]:
    """``payload``, ``count_bytes`` and ``serialized`` (whole message incl. metadata)."""
    if not message.has_content():
        return {"payload": 0, "count_bytes": 0, "serialized": message_to_proto(message).ByteSize()}
    figures = content_byte_figures(message.content)
    figures["serialized"] = message_to_proto(message).ByteSize()
    return figures


def record_byte_figures(array_record: ArrayRecord, config_record: ConfigRecord) -> dict[str, int]:
    """The same figures for one (ArrayRecord, ConfigRecord) pair, before a Message exists;
    ``serialized`` is then the size of a RecordDict holding just the pair."""
    return content_byte_figures(RecordDict({"arrays": array_record, "codec": config_record}))
