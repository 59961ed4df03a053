"""Flower records for a payload: an ArrayRecord with the two buffers, a ConfigRecord with the manifest.

Receiving never unpickles and never allocates more than was received: the manifest (JSON) is
parsed and checked first, then each ``Array``'s declared dtype/shape, its ``.npy`` header
(parsed here, not by ``np.load``) and its byte length are compared with what the manifest
implies, and only then is the array viewed in place (``np.frombuffer``, no copy).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from .manifest import MAX_MANIFEST_BYTES, Layout, load_manifest, manifest_bound, read_layout, remember_sizes
from .payload import Encoded, PayloadError, check_buffers, checked_layout

CODES_KEY = "codes"
SCALES_KEY = "scales"
MANIFEST_KEY = "fedkron.manifest"
_MAX_NPY_HEADER = 4096  # np.save writes 128 bytes for a 1-D array


def to_records(encoded: Encoded) -> tuple[ArrayRecord, ConfigRecord]:
    layout = checked_layout(encoded)  # never send what we would refuse to receive
    arrays = ArrayRecord({CODES_KEY: Array(encoded.codes), SCALES_KEY: Array(encoded.scales)})
    remember_sizes(encoded.manifest_bytes, layout)
    return arrays, ConfigRecord({MANIFEST_KEY: encoded.manifest_bytes})


def from_records(
    array_record: ArrayRecord,
    config_record: ConfigRecord,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> Encoded:
    """Rebuild and fully check a payload; any problem with the records is a PayloadError.

    ``expected`` (name → shape, any order) is what the receiver will accept: the manifest may
    then inflate only to what those entries can take, and must list exactly those tensors with
    those shapes, checked before any array buffer is read. A malformed ``expected`` is the
    caller's bug and raises TypeError/ValueError.
    """
    wanted = None if expected is None else normalise_expected(expected)
    try:
        return _from_records(array_record, config_record, wanted)
    except PayloadError:
        raise
    except Exception as err:  # MemoryError, KeyError, OverflowError...: a hostile payload must not escape as those
        raise PayloadError(f"fedkron.compression: payload refused ({type(err).__name__}: {err})") from err


def normalise_expected(expected: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    if not isinstance(expected, Mapping):
        raise TypeError(f"fedkron.compression: expected must map name -> shape, got {type(expected).__name__}")
    out = {}
    for name, shape in expected.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"fedkron.compression: expected tensor names must be non-empty strings, got {name!r}")
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"fedkron.compression: expected shape of {name!r} is {dims}")
        out[name] = dims
    return out


def _from_records(array_record: object, config_record: object, expected: dict | None) -> Encoded:
    if not isinstance(array_record, ArrayRecord) or not isinstance(config_record, ConfigRecord):
        raise PayloadError(
            "fedkron.compression: from_records expects (ArrayRecord, ConfigRecord), got "
            f"({type(array_record).__name__}, {type(config_record).__name__})"
        )
    if set(array_record.keys()) != {CODES_KEY, SCALES_KEY}:
        raise PayloadError(
            f"fedkron.compression: array record keys {sorted(array_record.keys())} != ['codes', 'scales']"
        )
    if MANIFEST_KEY not in config_record:
        raise PayloadError(f"fedkron.compression: config record has no {MANIFEST_KEY!r} entry")
    raw = config_record[MANIFEST_KEY]
    bound = MAX_MANIFEST_BYTES if expected is None else manifest_bound(expected)
    manifest = load_manifest(raw, bound)
    layout = read_layout(manifest, expected)
    codes = _view_array(array_record[CODES_KEY], CODES_KEY, np.dtype(np.uint8), layout.code_offsets[-1], layout)
    scales = _view_array(array_record[SCALES_KEY], SCALES_KEY, np.dtype(np.float32), layout.scale_offsets[-1], layout)
    check_buffers(layout, codes, scales)
    remember_sizes(raw, layout)
    return Encoded.checked(codes, scales, manifest, layout, raw)


def _view_array(array: object, label: str, dtype: np.dtype, count: int, layout: Layout) -> np.ndarray:
    """A read-only 1-D view of ``array``'s bytes after every declared size was checked."""
    where = f"fedkron.compression: array {label!r}"
    implied = f"the manifest ({layout.codec}, {len(layout.names)} tensors) implies {dtype.name}[{count}]"
    if not isinstance(array, Array):
        raise PayloadError(f"{where} is a {type(array).__name__}, not a flwr Array")
    if array.stype != "numpy.ndarray" or not isinstance(array.data, bytes):
        raise PayloadError(f"{where} has serialization type {array.stype!r}, not 'numpy.ndarray' bytes")
    if array.dtype != dtype.name or list(array.shape) != [count]:
        raise PayloadError(f"{where} declares {array.dtype}{list(array.shape)}; {implied}")
    stream = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, header_dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _, header_dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=_MAX_NPY_HEADER)
        else:
            raise PayloadError(f"{where}: .npy format version {version} is not 1.0 or 2.0")
    except (ValueError, TypeError, SyntaxError, EOFError) as err:
        if isinstance(err, PayloadError):
            raise
        raise PayloadError(f"{where}: bytes do not start with a valid .npy header ({err})") from err
    if header_dtype != dtype or tuple(shape) != (count,):
        raise PayloadError(f"{where}: .npy header says {header_dtype}{list(shape)}; {implied}")
    offset = stream.tell()
    if len(array.data) - offset != count * dtype.itemsize:
        raise PayloadError(
            f"{where} carries {len(array.data) - offset} data bytes after its header; {implied} "
            f"= {count * dtype.itemsize} bytes"
        )
    return np.frombuffer(array.data, dtype=dtype, count=count, offset=offset)
