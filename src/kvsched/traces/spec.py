"""Parse CLI workload strings such as `synthetic:n=1000,rate=5,prompt=512,output=20`.

Grammar (docs/traces.md has examples):

    spec    := "synthetic:" item ("," item)*        the prefix is optional here
    item    := key "=" value                        keys: n, arrival, rate, cv, prompt, output, types,
                                                    shared_prefix (a length), num_prefixes, turns
    length  := INT | fixed(INT) | uniform(LO,HI) | geometric(MEAN) | lognormal(MU,SIGMA) | empirical(TRACE)
    types   := PROMPTxOUTPUT[:WEIGHT] ("|" PROMPTxOUTPUT[:WEIGHT])*

Commas inside parentheses belong to the value. Unknown or repeated keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kvsched.request import Request
from kvsched.traces.loaders import read_any
from kvsched.traces.shipped import read_shipped
from kvsched.traces.synthetic import (
    Empirical,
    Fixed,
    Geometric,
    LengthDist,
    LogNormal,
    RequestType,
    UniformInt,
    synthetic_workload,
)
from kvsched.traces.validate import TraceError

SYNTHETIC_PREFIX = "synthetic:"
KEYS = ("n", "arrival", "rate", "cv", "prompt", "output", "types", "shared_prefix", "num_prefixes", "turns")
_CALL = re.compile(r"^(\w+)\((.*)\)$")
_TYPE = re.compile(r"^(\d+)x(\d+)(?::([0-9.eE+-]+))?$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _number(text: str, key: str, kind: type = float) -> float:
    try:
        return kind(text)
    except ValueError:
        raise TraceError(f"{key}={text!r} is not {'an integer' if kind is int else 'a number'}") from None


def trace_lengths(name_or_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_lens, output_lens) in file order of a shipped trace name or a CSV path."""
    try:
        table = read_shipped(name_or_path)
    except KeyError:
        if not Path(name_or_path).is_file():
            raise TraceError(f"{name_or_path!r} is neither a shipped trace nor a file") from None
        table = read_any(name_or_path)
    return table.prompt_lens, table.output_lens


def parse_length(text: str, key: str) -> LengthDist:
    """One length value of the grammar (see the module docstring)."""
    if re.fullmatch(r"\d+", text):
        return Fixed(int(text))
    call = _CALL.match(text)
    if call is None:
        raise TraceError(f"{key}={text!r} is not a length (INT, fixed(..), uniform(..), "
                         "geometric(..), lognormal(..) or empirical(TRACE))")
    func, args = call.group(1), [a.strip() for a in call.group(2).split(",")]
    arity = {"fixed": 1, "uniform": 2, "geometric": 1, "lognormal": 2, "empirical": 1}
    if func not in arity:
        raise TraceError(f"{key}: unknown length distribution {func!r}; known: {', '.join(arity)}")
    if len(args) != arity[func]:
        raise TraceError(f"{key}: {func} takes {arity[func]} argument(s), got {text!r}")
    if func == "fixed":
        return Fixed(_number(args[0], key, int))
    if func == "uniform":
        return UniformInt(_number(args[0], key, int), _number(args[1], key, int))
    if func == "geometric":
        return Geometric(_number(args[0], key))
    if func == "lognormal":
        return LogNormal(_number(args[0], key), _number(args[1], key))
    prompt_lens, output_lens = trace_lengths(args[0])
    return Empirical(prompt_lens if key == "prompt" else output_lens, name=f"empirical({args[0]})")


def parse_types(text: str) -> list[RequestType]:
    """`512x20:0.7|512x50:0.3` -> request types (weight defaults to 1)."""
    types = []
    for part in text.split("|"):
        match = _TYPE.match(part.strip())
        if match is None:
            raise TraceError(f"types: {part!r} is not PROMPTxOUTPUT[:WEIGHT], e.g. 512x20:0.7")
        weight = _number(match.group(3), "types") if match.group(3) else 1.0
        types.append(RequestType(int(match.group(1)), int(match.group(2)), weight))
    return types


def parse_fields(spec: str) -> dict[str, str]:
    """key -> raw value text; unknown, repeated or malformed items are errors."""
    body = spec.removeprefix(SYNTHETIC_PREFIX)
    fields: dict[str, str] = {}
    for item in _split_top_level(body):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise TraceError(f"item {item!r} is not key=value")
        if key not in KEYS:
            raise TraceError(f"unknown key {key!r}; known keys: {', '.join(KEYS)}")
        if key in fields:
            raise TraceError(f"key {key!r} given twice")
        fields[key] = value
    return fields


def parse_synthetic(spec: str, rng: np.random.Generator) -> list[Request]:
    """The workload a `synthetic:...` string describes, drawn from `rng`."""
    try:
        return _build(parse_fields(spec), rng)
    except TraceError as err:  # name the whole spec once, whichever part was wrong
        raise TraceError(f"workload spec {spec!r}: {err}") from None


def _build(fields: dict[str, str], rng: np.random.Generator) -> list[Request]:
    if "n" not in fields:
        raise TraceError("missing key 'n' (number of requests)")
    return synthetic_workload(
        _number(fields["n"], "n", int),
        rng=rng,
        arrival=fields.get("arrival", "poisson"),
        rate=_number(fields["rate"], "rate") if "rate" in fields else None,
        cv=_number(fields["cv"], "cv") if "cv" in fields else None,
        prompt=parse_length(fields["prompt"], "prompt") if "prompt" in fields else None,
        output=parse_length(fields["output"], "output") if "output" in fields else None,
        types=parse_types(fields["types"]) if "types" in fields else None,
        shared_prefix=parse_length(fields["shared_prefix"], "shared_prefix") if "shared_prefix" in fields else None,
        num_prefixes=_number(fields["num_prefixes"], "num_prefixes", int) if "num_prefixes" in fields else 1,
        turns=_number(fields["turns"], "turns", int) if "turns" in fields else 1,
    )
