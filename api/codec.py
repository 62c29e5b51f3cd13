"""Codecs for the object model: msgpack for the store and the agent channel, JSON for the public API.

Both are driven by the dataclasses' type hints, so a new field needs no codec change. Decoding is strict:
an unknown field, a value of the wrong type or an unknown enum value raises :class:`CodecError` whose
``field`` is the dotted path to the offending value (``spec.task.container.mounts[0].type``). Fields that are
absent take their defaults, so API clients may send only what they mean to set.

Both formats round-trip exactly: ``decode(encode(x)) == x`` for every object. Times are held as
timezone-aware UTC datetimes with microsecond precision: msgpack carries them as integer microseconds since
the epoch, JSON as RFC 3339 strings. Bytes are raw in msgpack and base64 in JSON.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgpack

from api.errors import CodecError

T = TypeVar("T")

#: Version of the store's value layout; stored with every value so a later layout can read older ones.
SCHEMA_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]


class _Format:
    """How one wire format spells the types that JSON and msgpack do not share."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self._encoders: dict[Any, Encoder] = {}
        self._decoders: dict[Any, Decoder] = {}

    # --- times and bytes ---------------------------------------------------------------------------
    def enc_datetime(self, v: datetime) -> Any:
        if self.binary:
            return (v - _EPOCH) // timedelta(microseconds=1)
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def dec_datetime(self, v: Any, path: str) -> datetime:
        if self.binary:
            if type(v) is not int:
                raise CodecError(path, f"expected a time in microseconds, got {_kind(v)}")
            return _EPOCH + timedelta(microseconds=v)
        if not isinstance(v, str):
            raise CodecError(path, f"expected an RFC 3339 time string, got {_kind(v)}")
        try:
            parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise CodecError(path, f"not an RFC 3339 time: {v!r}") from None
        if parsed.tzinfo is None:
            raise CodecError(path, f"time without a timezone: {v!r}")
        return parsed.astimezone(UTC)

    def enc_bytes(self, v: bytes) -> Any:
        return v if self.binary else base64.b64encode(v).decode("ascii")

    def dec_bytes(self, v: Any, path: str) -> bytes:
        if self.binary:
            if not isinstance(v, bytes):
                raise CodecError(path, f"expected bytes, got {_kind(v)}")
            return v
        if not isinstance(v, str):
            raise CodecError(path, f"expected base64 text, got {_kind(v)}")
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise CodecError(path, "not valid base64") from None

    # --- building per-type functions ----------------------------------------------------------------
    def encoder(self, tp: Any) -> Encoder:
        fn = self._encoders.get(tp)
        if fn is None:
            fn = self._build_encoder(tp)
            self._encoders[tp] = fn
        return fn

    def decoder(self, tp: Any) -> Decoder:
        fn = self._decoders.get(tp)
        if fn is None:
            fn = self._build_decoder(tp)
            self._decoders[tp] = fn
        return fn

    def _build_encoder(self, tp: Any) -> Encoder:
        if dataclasses.is_dataclass(tp):
            # Resolved lazily: a dataclass may refer to itself through its fields.
            fields: list[tuple[str, Encoder]] = []

            def enc_dc(v: Any) -> Any:
                if not fields:
                    hints = typing.get_type_hints(tp)
                    fields.extend((f.name, self.encoder(hints[f.name])) for f in dataclasses.fields(tp))
                return {name: fn(getattr(v, name)) for name, fn in fields}

            return enc_dc
        if tp in (str, int, float, bool):
            return _identity
        if tp is bytes:
            return self.enc_bytes
        if tp is datetime:
            return self.enc_datetime
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum_value
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if len(inner) != 1:
                raise TypeError(f"unsupported union {tp}")
            inner_enc = self.encoder(inner[0])
            return lambda v: None if v is None else inner_enc(v)
        if origin is tuple:
            item_enc = self.encoder(args[0])
            if item_enc is _identity:
                return list
            return lambda v: [item_enc(x) for x in v]
        if origin is dict:
            val_enc = self.encoder(args[1])
            if val_enc is _identity:
                return dict
            return lambda v: {k: val_enc(x) for k, x in v.items()}
        raise TypeError(f"the codec does not know how to encode {tp!r}")

    def _build_decoder(self, tp: Any) -> Decoder:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return _DataclassDecoder(self, tp)
        if tp is str:
            return _scalar(str, "a string")
        if tp is bool:
            return _scalar(bool, "a boolean")
        if tp is int:
            return _dec_int
        if tp is float:
            return _dec_float
        if tp is bytes:
            return self.dec_bytes
        if tp is datetime:
            return self.dec_datetime
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum_decoder(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            inner = self.decoder(next(a for a in args if a is not type(None)))
            return lambda v, path: None if v is None else inner(v, path)
        if origin is tuple:
            item_dec = self.decoder(args[0])

            def dec_tuple(v: Any, path: str) -> tuple[Any, ...]:
                if not isinstance(v, list | tuple):
                    raise CodecError(path, f"expected a list, got {_kind(v)}")
                return tuple(item_dec(x, f"{path}[{i}]") for i, x in enumerate(v))

            return dec_tuple
        if origin is dict:
            val_dec = self.decoder(args[1])

            def dec_dict(v: Any, path: str) -> dict[str, Any]:
                if not isinstance(v, dict):
                    raise CodecError(path, f"expected an object, got {_kind(v)}")
                out = {}
                for k, x in v.items():
                    if not isinstance(k, str):
                        raise CodecError(path, f"keys must be strings, got {_kind(k)}")
                    out[k] = val_dec(x, f"{path}.{k}")
                return out

            return dec_dict
        raise TypeError(f"the codec does not know how to decode {tp!r}")


class _DataclassDecoder:
    """Decodes a mapping into one dataclass, rejecting unknown fields."""

    def __init__(self, fmt: _Format, tp: type) -> None:
        self.fmt = fmt
        self.tp = tp
        self.fields: dict[str, Decoder] | None = None

    def __call__(self, v: Any, path: str) -> Any:
        if self.fields is None:
            hints = typing.get_type_hints(self.tp)
            self.fields = {f.name: self.fmt.decoder(hints[f.name]) for f in dataclasses.fields(self.tp)}
        if not isinstance(v, dict):
            raise CodecError(path or self.tp.__name__, f"expected an object, got {_kind(v)}")
        kwargs = {}
        for name, raw in v.items():
            dec = self.fields.get(name)
            sub = f"{path}.{name}" if path else str(name)
            if dec is None:
                raise CodecError(sub, f"unknown field for {self.tp.__name__}")
            kwargs[name] = dec(raw, sub)
        return self.tp(**kwargs)


def _identity(v: Any) -> Any:
    return v


def _enum_value(v: enum.Enum) -> Any:
    return v.value


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _scalar(tp: type, what: str) -> Decoder:
    def dec(v: Any, path: str) -> Any:
        if type(v) is not tp:
            raise CodecError(path, f"expected {what}, got {_kind(v)}")
        return v

    return dec


def _dec_int(v: Any, path: str) -> int:
    if type(v) is not int:
        raise CodecError(path, f"expected an integer, got {_kind(v)}")
    return v


def _dec_float(v: Any, path: str) -> float:
    if type(v) not in (int, float):
        raise CodecError(path, f"expected a number, got {_kind(v)}")
    return float(v)


def _enum_decoder(tp: type[enum.Enum]) -> Decoder:
    by_value = {m.value: m for m in tp}
    choices = ", ".join(repr(m.value) for m in tp)

    def dec(v: Any, path: str) -> Any:
        try:
            return by_value[v]
        except (KeyError, TypeError):
            raise CodecError(path, f"{v!r} is not one of {choices}") from None

    return dec


_MSGPACK = _Format(binary=True)
_JSON = _Format(binary=False)


# --- public API ---------------------------------------------------------------------------------------
def to_plain(obj: Any, *, binary: bool = False) -> Any:
    """``obj`` as plain lists, dicts and scalars, in the JSON (default) or msgpack spelling."""
    fmt = _MSGPACK if binary else _JSON
    return fmt.encoder(type(obj))(obj)


def from_plain(tp: type[T], data: Any, *, binary: bool = False, path: str = "") -> T:
    """Build a ``tp`` from plain data; raises CodecError naming the field on bad input."""
    fmt = _MSGPACK if binary else _JSON
    result: T = fmt.decoder(tp)(data, path)
    return result


def encode_msgpack(obj: Any) -> bytes:
    """The store's and agent channel's encoding of a model object: ``[schema version, fields]``."""
    try:
        packed: bytes = msgpack.packb([SCHEMA_VERSION, to_plain(obj, binary=True)], use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as e:
        raise CodecError(type(obj).__name__, f"cannot encode: {e}") from None
    return packed


def decode_msgpack(tp: type[T], data: bytes) -> T:
    """Read what :func:`encode_msgpack` wrote; raises CodecError on anything else."""
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise CodecError("", f"not a valid msgpack value: {e}") from None
    if not (isinstance(envelope, list) and len(envelope) == 2 and type(envelope[0]) is int):
        raise CodecError("", "not a Shoal store value (expected [schema version, object])")
    if envelope[0] != SCHEMA_VERSION:
        raise CodecError("", f"unsupported schema version {envelope[0]} (this build reads {SCHEMA_VERSION})")
    return from_plain(tp, envelope[1], binary=True)


def encode_json(obj: Any) -> str:
    """The public API's JSON for a model object."""
    return json.dumps(to_plain(obj), separators=(",", ":"), ensure_ascii=False)


def decode_json(tp: type[T], text: str | bytes) -> T:
    """Parse API JSON into ``tp``; raises CodecError on malformed JSON or bad fields."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CodecError("", f"malformed JSON: {e}") from None
    return from_plain(tp, data)
