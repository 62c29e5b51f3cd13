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
Decoder = Callable[[Any], Any]


class _Bad(Exception):
    """A decoding failure on its way out: ``path`` grows as it passes each enclosing field, and the public
    functions turn it into a :class:`CodecError`. Paths are built only when something fails, so the
    common case (valid input) pays nothing for them."""

    def __init__(self, message: str, *path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = list(path)

    def error(self, prefix: str = "") -> CodecError:
        parts = [prefix] if prefix else []
        parts += self.path
        text = ""
        for part in parts:
            text += part if not text or part.startswith("[") else "." + part
        return CodecError(text, self.message)


class _Format:
    """How one wire format spells the types that JSON and msgpack do not share, and the encoders and
    decoders built for it. Dataclass codecs are generated as Python source once per type: the store decodes
    every object every manager watches, and the generated functions are several times faster than
    walking the fields generically."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self._encoders: dict[Any, Encoder] = {}
        self._decoders: dict[Any, Decoder] = {}

    # --- times and bytes ---------------------------------------------------------------------------
    def enc_datetime(self, v: datetime) -> Any:
        if self.binary:
            return (v - _EPOCH) // timedelta(microseconds=1)
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def dec_datetime(self, v: Any) -> datetime:
        if self.binary:
            if type(v) is not int:
                raise _Bad(f"expected a time in microseconds, got {_kind(v)}")
            return _EPOCH + timedelta(microseconds=v)
        if not isinstance(v, str):
            raise _Bad(f"expected an RFC 3339 time string, got {_kind(v)}")
        try:
            parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise _Bad(f"not an RFC 3339 time: {v!r}") from None
        if parsed.tzinfo is None:
            raise _Bad(f"time without a timezone: {v!r}")
        return parsed.astimezone(UTC)

    def enc_bytes(self, v: bytes) -> Any:
        return v if self.binary else base64.b64encode(v).decode("ascii")

    def dec_bytes(self, v: Any) -> bytes:
        if self.binary:
            if not isinstance(v, bytes):
                raise _Bad(f"expected bytes, got {_kind(v)}")
            return v
        if not isinstance(v, str):
            raise _Bad(f"expected base64 text, got {_kind(v)}")
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise _Bad("not valid base64") from None

    # --- building per-type functions ----------------------------------------------------------------
    def encoder(self, tp: Any) -> Encoder:
        fn = self._encoders.get(tp)
        if fn is None:
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                # Registered before it is built: a dataclass may refer to itself through its fields.
                self._encoders[tp] = lambda v: self._encoders[tp](v)
            fn = self._build_encoder(tp)
            self._encoders[tp] = fn
        return fn

    def decoder(self, tp: Any) -> Decoder:
        fn = self._decoders.get(tp)
        if fn is None:
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                self._decoders[tp] = lambda v: self._decoders[tp](v)
            fn = self._build_decoder(tp)
            self._decoders[tp] = fn
        return fn

    def _build_encoder(self, tp: Any) -> Encoder:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._generate_encoder(tp)
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

    def _generate_encoder(self, tp: type) -> Encoder:
        hints = typing.get_type_hints(tp)
        env: dict[str, Any] = {}
        items = []
        for i, f in enumerate(dataclasses.fields(tp)):
            enc = self.encoder(hints[f.name])
            if enc is _identity:
                items.append(f"{f.name!r}: o.{f.name}")
            else:
                env[f"e{i}"] = enc
                items.append(f"{f.name!r}: e{i}(o.{f.name})")
        src = f"def encode(o):\n    return {{{', '.join(items)}}}\n"
        exec(compile(src, f"<encoder of {tp.__name__}>", "exec"), env)
        fn: Encoder = env["encode"]
        return fn

    def _build_decoder(self, tp: Any) -> Decoder:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._generate_decoder(tp)
        if tp is str:
            return _scalar(str, "a string")
        if tp is bool:
            return _scalar(bool, "a boolean")
        if tp is int:
            return _scalar(int, "an integer")
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
            return lambda v: None if v is None else inner(v)
        if origin is tuple:
            return _tuple_decoder(self.decoder(args[0]), _SCALARS.get(args[0]))
        if origin is dict:
            return _dict_decoder(self.decoder(args[1]), _SCALARS.get(args[1]))
        raise TypeError(f"the codec does not know how to decode {tp!r}")

    def _generate_decoder(self, tp: type) -> Decoder:
        """Source for one dataclass: check the keys, decode each present field (scalars inline), fall back
        to the field's default for absent ones, and name the field when anything inside it fails."""
        hints = typing.get_type_hints(tp)
        fields = dataclasses.fields(tp)
        env: dict[str, Any] = {
            "cls": tp,
            "_Bad": _Bad,
            "_kind": _kind,
            "MISSING": _MISSING,
            "FIELDS": frozenset(f.name for f in fields),
        }
        lines = [
            "def decode(v):",
            "    if type(v) is not dict:",
            "        raise _Bad('expected an object, got ' + _kind(v))",
            "    if not FIELDS.issuperset(v):",
            "        k = next(k for k in v if k not in FIELDS)",
            f"        raise _Bad('unknown field for {tp.__name__}', str(k))",
            "    g = v.get",
            "    f = ''",
            "    try:",
        ]
        args = []
        for i, f in enumerate(fields):
            hint = hints[f.name]
            if f.default is not dataclasses.MISSING:
                env[f"d{i}"] = f.default
                default = f"d{i}"
            elif f.default_factory is not dataclasses.MISSING:
                env[f"d{i}"] = f.default_factory
                default = f"d{i}()"
            else:
                raise TypeError(f"{tp.__name__}.{f.name} needs a default for the codec")
            lines.append(f"        f = {f.name!r}")
            lines.append(f"        x = g({f.name!r}, MISSING)")
            scalar = _SCALARS.get(hint)
            if scalar is not None:
                env[f"t{i}"] = scalar[0]
                lines.append(f"        if x is MISSING: a{i} = {default}")
                lines.append(f"        elif type(x) is t{i}: a{i} = x")
                lines.append(f"        else: raise _Bad('expected {scalar[1]}, got ' + _kind(x))")
            else:
                env[f"c{i}"] = self.decoder(hint)
                lines.append(f"        a{i} = {default} if x is MISSING else c{i}(x)")
            args.append(f"a{i}")
        lines += [
            "    except _Bad as e:",
            "        e.path.insert(0, f)",
            "        raise",
            f"    return cls({', '.join(args)})",
        ]
        exec(compile("\n".join(lines) + "\n", f"<decoder of {tp.__name__}>", "exec"), env)
        fn: Decoder = env["decode"]
        return fn


_MISSING = object()
#: Scalar types checked inline, with how an error names them.
_SCALARS: dict[Any, tuple[type, str]] = {
    str: (str, "a string"),
    bool: (bool, "a boolean"),
    int: (int, "an integer"),
}


def _identity(v: Any) -> Any:
    return v


def _enum_value(v: enum.Enum) -> Any:
    return v.value


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _scalar(tp: type, what: str) -> Decoder:
    def dec(v: Any) -> Any:
        if type(v) is not tp:
            raise _Bad(f"expected {what}, got {_kind(v)}")
        return v

    return dec


def _dec_float(v: Any) -> float:
    if type(v) not in (int, float):
        raise _Bad(f"expected a number, got {_kind(v)}")
    return float(v)


def _tuple_decoder(item: Decoder, scalar: tuple[type, str] | None) -> Decoder:
    def dec(v: Any) -> tuple[Any, ...]:
        if type(v) is not list and type(v) is not tuple:
            raise _Bad(f"expected a list, got {_kind(v)}")
        if scalar is not None:
            t = scalar[0]
            for i, x in enumerate(v):
                if type(x) is not t:
                    raise _Bad(f"expected {scalar[1]}, got {_kind(x)}", f"[{i}]")
            return tuple(v)
        try:
            return tuple([item(x) for x in v])
        except _Bad as e:
            for i, x in enumerate(v):  # only on failure: find which item it was
                try:
                    item(x)
                except _Bad:
                    e.path.insert(0, f"[{i}]")
                    break
            raise

    return dec


def _dict_decoder(value: Decoder, scalar: tuple[type, str] | None) -> Decoder:
    def dec(v: Any) -> dict[str, Any]:
        if type(v) is not dict:
            raise _Bad(f"expected an object, got {_kind(v)}")
        for k in v:
            if type(k) is not str:
                raise _Bad(f"keys must be strings, got {_kind(k)}")
        if scalar is not None:
            t = scalar[0]
            for k, x in v.items():
                if type(x) is not t:
                    raise _Bad(f"expected {scalar[1]}, got {_kind(x)}", k)
            return dict(v)
        out = {}
        for k, x in v.items():
            try:
                out[k] = value(x)
            except _Bad as e:
                e.path.insert(0, k)
                raise
        return out

    return dec


def _enum_decoder(tp: type[enum.Enum]) -> Decoder:
    by_value = {m.value: m for m in tp}
    choices = ", ".join(repr(m.value) for m in tp)

    def dec(v: Any) -> Any:
        try:
            return by_value[v]
        except (KeyError, TypeError):
            raise _Bad(f"{v!r} is not one of {choices}") from None

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
    try:
        result: T = fmt.decoder(tp)(data)
    except _Bad as e:
        raise e.error(path) from None
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
