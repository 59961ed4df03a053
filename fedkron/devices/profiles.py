"""Device profiles: what kind of machine and network each simulated client has.

A *mix* is a weighted list of profile specs; each numeric field is either a fixed value or a
log-normal around a median (``{median, sigma, min, max}``) so clients of one kind still differ.
``draw_profiles`` turns a mix into one compact ``DeviceProfile`` per client, drawn from a generator
seeded by (seed, client index) alone, so client 7 gets the same device in a federation of 10 or of
10,000. Where the built-in numbers come from: docs/devices.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tomllib

from fedkron.devices.mixes import BUILTIN_MIXES

_DRAW_TAG = 0xDE71CE  # separates the profile stream from the per-round streams in devices.timing


class DeviceMixError(ValueError):
    """A device mix file or mapping that does not validate; the message names the field."""


class DeviceProfile(NamedTuple):
    """One client's device. Compact on purpose: a tuple of floats plus a shared kind string."""

    kind: str
    speed: float  # compute speed relative to this machine (client seconds are divided by it)
    down_bps: float  # downlink bandwidth, bits/s
    up_bps: float  # uplink bandwidth, bits/s
    latency_s: float  # one-way latency added to each transfer, seconds
    availability: float  # probability of being online when sampled
    dropout: float  # probability of dropping out after the download, before the upload completes


class Dist(NamedTuple):
    """A fixed value (sigma 0) or a log-normal with this median and log-space sigma, clipped."""

    median: float
    sigma: float = 0.0
    min: float | None = None
    max: float | None = None

    def draw(self, z: float) -> float:
        value = self.median * math.exp(self.sigma * z)
        if self.min is not None:
            value = max(value, self.min)
        if self.max is not None:
            value = min(value, self.max)
        return value


@dataclass(frozen=True)
class ProfileSpec:
    """One kind of device in a mix. Units as in the file: Mbit/s and milliseconds."""

    name: str
    weight: float
    speed: Dist
    down_mbps: Dist
    up_mbps: Dist
    latency_ms: Dist
    availability: float
    dropout: float


@dataclass(frozen=True)
class DeviceMix:
    name: str
    profiles: tuple[ProfileSpec, ...]
    description: str = ""

    def profile_for(self, client: int, seed: int) -> DeviceProfile:
        """Client ``client``'s device: depends on (seed, client) only."""
        rng = np.random.default_rng([_DRAW_TAG, _nonneg(seed, "seed"), _nonneg(client, "client")])
        u = rng.random()
        z = rng.standard_normal(4)  # always four draws, so a fixed field never shifts the others
        total = sum(p.weight for p in self.profiles)
        acc, spec = 0.0, self.profiles[-1]
        for p in self.profiles:
            acc += p.weight / total
            if u < acc:
                spec = p
                break
        return DeviceProfile(
            spec.name,
            spec.speed.draw(z[0]),
            spec.down_mbps.draw(z[1]) * 1e6,
            spec.up_mbps.draw(z[2]) * 1e6,
            spec.latency_ms.draw(z[3]) / 1e3,
            spec.availability,
            spec.dropout,
        )


def draw_profiles(mix: DeviceMix, num_clients: int, seed: int) -> list[DeviceProfile]:
    """One profile per client index 0..num_clients-1; index-stable (see ``DeviceMix.profile_for``)."""
    return [mix.profile_for(i, seed) for i in range(_nonneg(num_clients, "num_clients"))]


def _nonneg(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


# ---- file format: TOML or JSON, validated with errors that name the field ----

MAX_VALUE = 1e9  # any number of a mix: 1e9 Mbit/s, 1e9 ms (11 days), 1e9x this machine's speed
MAX_SIGMA = 5.0  # a log-normal's sigma: e^(5 z) already spans 10^4 between the 5th and 95th percentile
_DIST_FIELDS = ("speed", "down_mbps", "up_mbps", "latency_ms")
_PROFILE_KEYS = {"name", "weight", *_DIST_FIELDS, "availability", "dropout"}


def _number(value: Any, where: str) -> float:
    """A finite float; an int too large for a float (10^400 in a JSON file) is refused, not an OverflowError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeviceMixError(f"{where}: expected a finite number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise DeviceMixError(f"{where}: expected a finite number, got {_short(value)}")
    if abs(number) > MAX_VALUE:  # 1e300 Mbit/s would turn every transfer time into 0 and sums into inf
        raise DeviceMixError(f"{where}: {_short(value)} is out of range; expected at most {MAX_VALUE:g}")
    return number


def _short(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: a 400-digit number or a long string cut to one readable line."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's 4300-digit str() limit
        text = f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= limit else text[: limit - 5] + "...(cut)"


def _dist(value: Any, where: str) -> Dist:
    if not isinstance(value, Mapping):
        v = _number(value, where)
        if v <= 0:
            raise DeviceMixError(f"{where}: expected a number > 0, got {value!r}")
        return Dist(v)
    unknown = set(value) - {"median", "sigma", "min", "max"}
    if unknown:
        raise DeviceMixError(f"{where}: unknown key(s) {sorted(unknown)}; expected median, sigma, min, max")
    if "median" not in value:
        raise DeviceMixError(f"{where}.median: missing (a distribution needs a median > 0)")
    median = _number(value["median"], f"{where}.median")
    sigma = _number(value.get("sigma", 0.0), f"{where}.sigma")
    lo = _number(value["min"], f"{where}.min") if "min" in value else None
    hi = _number(value["max"], f"{where}.max") if "max" in value else None
    if median <= 0:
        raise DeviceMixError(f"{where}.median: expected a number > 0, got {value['median']!r}")
    if sigma < 0:
        raise DeviceMixError(f"{where}.sigma: expected a number >= 0, got {value['sigma']!r}")
    if sigma > MAX_SIGMA:
        raise DeviceMixError(f"{where}.sigma: expected at most {MAX_SIGMA:g}, got {value['sigma']!r}")
    if lo is not None and lo <= 0:
        raise DeviceMixError(f"{where}.min: expected a number > 0, got {value['min']!r}")
    if lo is not None and hi is not None and hi < lo:
        raise DeviceMixError(f"{where}.max: {hi} is below min {lo}")
    return Dist(median, sigma, lo, hi)


def _probability(value: Any, where: str, lo_open: bool) -> float:
    p = _number(value, where)
    if not (0.0 <= p <= 1.0) or (lo_open and p == 0.0) or (not lo_open and p == 1.0):
        expect = "0 < p <= 1" if lo_open else "0 <= p < 1"
        raise DeviceMixError(f"{where}: expected a probability {expect}, got {value!r}")
    return p


def mix_from_mapping(data: Mapping, source: str = "device mix") -> DeviceMix:
    """Validate a parsed TOML/JSON document (``name``, ``description``, ``[[profile]]`` tables)."""
    if not isinstance(data, Mapping):
        raise DeviceMixError(f"{source}: expected a table/object at the top level, got {type(data).__name__}")
    unknown = set(data) - {"name", "description", "profile"}
    if unknown:
        raise DeviceMixError(f"{source}: unknown key(s) {sorted(unknown)}; expected name, description, profile")
    profiles = data.get("profile")
    if not isinstance(profiles, list) or not profiles:
        raise DeviceMixError(f"{source}: 'profile' must be a non-empty list of tables ([[profile]] in TOML)")
    specs, names = [], set()
    for i, p in enumerate(profiles):
        where = f"{source}: profile[{i}]"
        if not isinstance(p, Mapping):
            raise DeviceMixError(f"{where}: expected a table/object, got {type(p).__name__}")
        missing = sorted(_PROFILE_KEYS - set(p))
        if missing:
            raise DeviceMixError(f"{where}: missing field(s) {missing}")
        if set(p) - _PROFILE_KEYS:
            raise DeviceMixError(
                f"{where}: unknown field(s) {sorted(set(p) - _PROFILE_KEYS)}; expected {sorted(_PROFILE_KEYS)}"
            )
        name = p["name"]
        if not isinstance(name, str) or not name or name in names:
            raise DeviceMixError(f"{where}.name: expected a non-empty, unique string, got {_short(name)}")
        names.add(name)
        where = f"{source}: profile[{i}] ({name})"
        weight = _number(p["weight"], f"{where}.weight")
        if weight <= 0:
            raise DeviceMixError(f"{where}.weight: expected a number > 0, got {p['weight']!r}")
        dists = {f: _dist(p[f], f"{where}.{f}") for f in _DIST_FIELDS}
        specs.append(
            ProfileSpec(
                name,
                weight,
                availability=_probability(p["availability"], f"{where}.availability", True),
                dropout=_probability(p["dropout"], f"{where}.dropout", False),
                **dists,
            )
        )
    name = data.get("name", "custom")
    if not isinstance(name, str):
        raise DeviceMixError(f"{source}: name: expected a string, got {_short(name)}")
    return DeviceMix(name, tuple(specs), str(data.get("description", "")))


def mix_to_mapping(mix: DeviceMix) -> dict:
    """The inverse of ``mix_from_mapping`` (fixed values written as plain numbers)."""

    def dist(d: Dist):
        if d.sigma == 0 and d.min is None and d.max is None:
            return d.median
        out = {"median": d.median, "sigma": d.sigma}
        out.update({k: v for k, v in (("min", d.min), ("max", d.max)) if v is not None})
        return out

    return {
        "name": mix.name,
        "description": mix.description,
        "profile": [
            {
                "name": p.name,
                "weight": p.weight,
                **{f: dist(getattr(p, f)) for f in _DIST_FIELDS},
                "availability": p.availability,
                "dropout": p.dropout,
            }
            for p in mix.profiles
        ],
    }


def save_mix(mix: DeviceMix, path: str | Path) -> Path:
    """Write a mix as TOML or JSON (by suffix), e.g. a built-in to start a custom one from."""
    path = Path(path)
    doc = mix_to_mapping(mix)
    if path.suffix == ".toml":
        import tomli_w  # a Flower dependency

        path.write_text(tomli_w.dumps(doc))
    elif path.suffix == ".json":
        path.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        raise DeviceMixError(f"{path}: a device mix file must end in .toml or .json")
    return path


def load_mix(spec: str | Path) -> DeviceMix:
    """``--devices NAME|FILE``: a built-in mix by name, else a .toml or .json file."""

    if isinstance(spec, str) and spec in BUILTIN_MIXES:
        return mix_from_mapping(BUILTIN_MIXES[spec], f"built-in mix {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise DeviceMixError(
            f"unknown device mix {str(spec)!r}: not a built-in ({', '.join(BUILTIN_MIXES)}) and no such file"
        )
    if path.suffix not in (".toml", ".json"):
        raise DeviceMixError(f"{path}: a device mix file must end in .toml or .json")
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise DeviceMixError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DeviceMixError(
            f"{path}: byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start} is not UTF-8"
        ) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise DeviceMixError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    except RecursionError:
        raise DeviceMixError(
            f"{path}: nested too deeply to read (a device mix is a table of [[profile]] tables)"
        ) from None
    except ValueError as exc:  # an integer beyond Python's 4300-digit conversion limit
        raise DeviceMixError(f"{path}: a value Python cannot read ({str(exc).splitlines()[0]})") from None
    return mix_from_mapping(data, str(path))
