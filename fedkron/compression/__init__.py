"""Update codecs: packed 4/8/16/32-bit payloads, error feedback, Flower records, byte figures.

Data flow on a client: ``ErrorFeedback.step(update, get_codec("nf4", double_quant=True))`` →
``to_records``; on the server: ``from_records(arrays, config, expected)`` (names/shapes and every
buffer size checked before anything is allocated) → ``decode`` (any codec). Wire format v2.
"""

from .byte_figures import content_byte_figures, message_byte_figures, payload_bytes, payload_values, record_byte_figures
from .codecs import Codec, decode, get_codec
from .error_feedback import ErrorFeedback
from .payload import CODE_BITS, FORMAT_VERSION, Encoded, PayloadError
from .records import MANIFEST_KEY, from_records, to_records

CODECS = tuple(CODE_BITS)

__all__ = [
    "CODECS",
    "Codec",
    "Encoded",
    "ErrorFeedback",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "PayloadError",
    "content_byte_figures",
    "decode",
    "from_records",
    "get_codec",
    "message_byte_figures",
    "payload_bytes",
    "payload_values",
    "record_byte_figures",
    "to_records",
]
