"""A deterministic JSON document valid against a JSON Schema, for structured outputs and tools.

Covers what SDKs send: the schemas pydantic models produce (``$defs`` and ``$ref``, ``anyOf``
for ``Optional``, enums, nested models and lists, strict mode's ``additionalProperties: false``)
and hand-written tool parameter schemas (``minimum``/``maximum``, ``minItems``, ``format``).
Keywords it does not understand (``pattern``, ``not``, ``if``) are ignored rather than refused:
the mock answers something plausible instead of failing a demo.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ledger.providers.mock.words import words

# Past this depth recursive schemas stop growing: optional branches take ``null``, arrays their
# minimum length and objects their required properties only.
_MAX_DEPTH = 6
_FORMATS = {
    "date": "2024-01-15",
    "date-time": "2024-01-15T09:30:00Z",
    "time": "09:30:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "duration": "PT1H",
}
# Bounds on what a client's schema can make the mock build: a schema that demands a billion
# items, or recurses through required properties forever, gets a finite (if invalid) answer.
_HARD_DEPTH = 64
_MAX_ITEMS = 64
_MAX_LENGTH = 4096


def instance_for(schema: Any, seed: int = 0) -> Any:
    """A value valid against ``schema``; the same schema and seed always give the same value."""
    return _Generator(schema if isinstance(schema, Mapping) else {}, seed).value(schema, 0, "")


class _Generator:
    def __init__(self, root: Mapping[str, Any], seed: int) -> None:
        self._root = root
        self._seed = seed

    def value(self, schema: Any, depth: int, path: str) -> Any:
        if depth > _HARD_DEPTH:
            return None
        if not isinstance(schema, Mapping):
            return None if schema is False else self._string({}, path)
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._pick(path, len(enum))] if depth else enum[0]
        if isinstance(schema.get("allOf"), list):
            schema = self._merged(schema)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(self._choose(options, depth), depth + 1, path)
        kind = self._type(schema, depth)
        if kind == "object":
            return self._object(schema, depth, path)
        if kind == "array":
            return self._array(schema, depth, path)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema, path)

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Follow local ``$ref`` pointers (``#/$defs/X``, ``#/definitions/X``, ``#``)."""
        seen = 0
        while isinstance(schema.get("$ref"), str) and seen < 32:
            seen += 1
            target: Any = self._root
            ref = schema["$ref"]
            if not ref.startswith("#"):
                return {k: v for k, v in schema.items() if k != "$ref"}
            for part in filter(None, ref[1:].split("/")):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, Mapping) else None
            if not isinstance(target, Mapping):
                return {k: v for k, v in schema.items() if k != "$ref"}
            # Sibling keywords next to $ref (a description, a default) stay with it.
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings}
        return schema

    def _merged(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if not isinstance(part, Mapping):
                continue
            part = self._resolve(part)
            for key, value in part.items():
                if key == "properties" and isinstance(value, Mapping):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _choose(self, options: list[Any], depth: int) -> Any:
        # The first option, as a model would read the schema, until recursion must end.
        if depth >= _MAX_DEPTH:
            for option in options:
                if isinstance(option, Mapping) and self._resolve(option).get("type") == "null":
                    return option
        return options[0]

    def _type(self, schema: Mapping[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            names = [k for k in kind if isinstance(k, str)]
            if depth >= _MAX_DEPTH and "null" in names:
                return "null"
            concrete = [k for k in names if k != "null"]
            kind = concrete[0] if concrete else (names[0] if names else None)
        if isinstance(kind, str):
            return kind
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
            return "number"
        return "string"

    def _object(self, schema: Mapping[str, Any], depth: int, path: str) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        # A model fills in every property it is shown; deep in a recursive schema, only
        # the required ones, so the document stays finite.
        names = list(properties) if depth < _MAX_DEPTH else [n for n in properties if n in required]
        names += [r for r in required if r not in names]
        result: dict[str, Any] = {}
        for name in names:
            result[name] = self.value(properties.get(name, {}), depth + 1, f"{path}/{name}")
        extra = schema.get("additionalProperties")
        minimum = min(_count(schema.get("minProperties")) or 0, _MAX_ITEMS)
        index = 0
        while len(result) < minimum and extra is not False:
            key = f"key_{index}"
            index += 1
            if key not in result:
                result[key] = self.value(
                    extra if isinstance(extra, Mapping) else {}, depth + 1, f"{path}/{key}"
                )
        return result

    def _array(self, schema: Mapping[str, Any], depth: int, path: str) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft-07 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        minimum = min(_count(schema.get("minItems")) or 0, _MAX_ITEMS)
        maximum = _count(schema.get("maxItems"))
        count = max(minimum, len(prefix) if prefix else (2 if depth < _MAX_DEPTH else 0))
        if maximum is not None:
            count = min(count, maximum)
        result = []
        for index in range(count):
            item_schema = prefix[index] if index < len(prefix) else items
            if item_schema is None:
                item_schema = {}
            result.append(self.value(item_schema, depth + 1, f"{path}/{index}"))
        return result

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, high = _integer_bounds(schema)
        value = 42
        if low is not None and value < low:
            value = low
        if high is not None and value > high:
            value = high
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0 and value % step:
            value += step - value % step
            if high is not None and value > high:
                value -= step
        return value

    def _number(self, schema: Mapping[str, Any]) -> float | int:
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            return self._integer(schema)
        if isinstance(step, float) and step > 0:
            return _multiple_of(schema, step)
        low, low_open = _bound(schema, "minimum", "exclusiveMinimum")
        high, high_open = _bound(schema, "maximum", "exclusiveMaximum")
        value = 42.5
        above_low = low is None or value > low or (value == low and not low_open)
        below_high = high is None or value < high or (value == high and not high_open)
        if above_low and below_high:
            return value
        if low is not None and high is not None:
            return (low + high) / 2
        if low is not None:
            return low if not low_open else low + 1
        assert high is not None
        return high if not high_open else high - 1

    def _string(self, schema: Mapping[str, Any], path: str) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            number = (self._seed * 2654435761 + sum(map(ord, path))) % (1 << 128)
            text = f"{number:032x}"
            text = f"{text[:8]}-{text[8:12]}-4{text[13:16]}-8{text[17:20]}-{text[20:32]}"
        elif isinstance(fmt, str) and fmt in _FORMATS:
            text = _FORMATS[fmt]
        else:
            text = " ".join(words(self._seed + sum(map(ord, path)), 1 + self._pick(path, 3)))
        minimum = min(_count(schema.get("minLength")) or 0, _MAX_LENGTH)
        maximum = _count(schema.get("maxLength"))
        if len(text) < minimum:
            text = ((text + " ") * (minimum // (len(text) + 1) + 1))[:minimum]
        if maximum is not None:
            text = text[:maximum]
        return text

    def _pick(self, path: str, options: int) -> int:
        return (self._seed + sum(map(ord, path))) % options


def _integer_bounds(schema: Mapping[str, Any]) -> tuple[int | None, int | None]:
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum")
    high, high_open = _bound(schema, "maximum", "exclusiveMaximum")
    low_i = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
    high_i = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
    return low_i, high_i


def _multiple_of(schema: Mapping[str, Any], step: float) -> float:
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum")
    high, _ = _bound(schema, "maximum", "exclusiveMaximum")
    count = max(1, round(42 / step))
    if low is not None and count * step <= low:
        count = math.floor(low / step) + 1 if low_open else math.ceil(low / step)
    if high is not None and count * step > high:
        count = math.floor(high / step)
    return count * step


def _bound(schema: Mapping[str, Any], inclusive: str, exclusive: str) -> tuple[float | None, bool]:
    """The tighter of a schema's inclusive and exclusive limit, and whether it is exclusive."""
    closed = _number_or_none(schema.get(inclusive))
    open_ = _number_or_none(schema.get(exclusive))
    if open_ is None:
        return closed, False
    if closed is None:
        return open_, True
    tighter_open = open_ >= closed if inclusive == "minimum" else open_ <= closed
    return (open_, True) if tighter_open else (closed, False)


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
