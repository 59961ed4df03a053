"""Flower records for a payload: an ArrayRecord with the two buffers, a ConfigRecord with the manifest.

Nothing here unpickles: ``Array.numpy()`` loads with ``np.load(..., allow_pickle=False)``
(flwr 1.41, ``flwr/app/message/array.py``), and the manifest is JSON.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord

from .payload import Encoded, PayloadError, checked_layout, load_manifest

CODES_KEY = "codes"
SCALES_KEY = "scales"
MANIFEST_KEY = "fedkron.manifest"


def to_records(encoded: Encoded) -> tuple[ArrayRecord, ConfigRecord]:
    checked_layout(encoded)  # never send what we would refuse to receive
    arrays = ArrayRecord({CODES_KEY: Array(encoded.codes), SCALES_KEY: Array(encoded.scales)})
    return arrays, ConfigRecord({MANIFEST_KEY: encoded.manifest_bytes})


def from_records(array_record: ArrayRecord, config_record: ConfigRecord) -> Encoded:
    """Rebuild and fully check a payload; raises PayloadError on anything inconsistent."""
    if not isinstance(array_record, ArrayRecord) or not isinstance(config_record, ConfigRecord):
        raise TypeError(
            "fedkron.compression: from_records expects (ArrayRecord, ConfigRecord), got "
            f"({type(array_record).__name__}, {type(config_record).__name__})"
        )
    if set(array_record.keys()) != {CODES_KEY, SCALES_KEY}:
        raise PayloadError(f"fedkron.compression: array record keys {sorted(array_record.keys())} != ['codes', 'scales']")
    if MANIFEST_KEY not in config_record:
        raise PayloadError(f"fedkron.compression: config record has no {MANIFEST_KEY!r} entry")
    try:
        codes = array_record[CODES_KEY].numpy()
        scales = array_record[SCALES_KEY].numpy()
    except (TypeError, ValueError, OSError, EOFError) as err:
        raise PayloadError(f"fedkron.compression: array bytes do not load as .npy ({err})") from err
    encoded = Encoded(codes, scales, load_manifest(config_record[MANIFEST_KEY]))
    checked_layout(encoded)
    return encoded
