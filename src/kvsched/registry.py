"""Name -> factory registries for schedulers, traces and cost models.

Adding a scheduler touches one file: decorate its class with
`@SCHEDULERS.register("name")` in a module of the `kvsched.schedulers` package. Nothing
imports that module for the registration: `SCHEDULERS` imports its home package's modules
itself, when a name it does not hold is asked for (the module named like the scheduler
first, then all of them) or when all names are listed, so a `vllm` run imports only
`schedulers/vllm.py` (and what it imports). Cluster routers register the same way with `@ROUTERS.register("name")`
(`kvsched.cluster.routers`).

A factory's keyword arguments are its options; `Registry.options` lists them (name, type
from the annotation or the default, default) and `Registry.check_options` is the one
validator every user-given option goes through (`-o KEY=VALUE` on simulate, compare and
serve, sweep grids and `--opt`): unknown names get the closest known name and the list of
options, values are coerced to the annotated type (int, float, bool, str, Literal, Enum,
X | None, list[X]) and a value of the wrong type names the option, its type and default.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A registered name, its factory and its one-line description."""

    name: str
    factory: Callable[..., T]
    description: str


class OptionError(ValueError):
    """A user-given option a factory does not take, or a value of the wrong type: one line."""


_NO_DEFAULT = inspect.Parameter.empty
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True, slots=True)
class Option:
    """One keyword option of a factory: name, type and default (see `options_of`)."""

    name: str
    type: Any  # the resolved annotation, the default's type, or None (anything goes)
    default: Any = _NO_DEFAULT

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT

    def describe(self) -> str:
        """`name: type = default`, as `kvsched schedulers --verbose` lists it."""
        text = self.name if self.type is None else f"{self.name}: {type_name(self.type)}"
        return text + ("" if self.required else f" = {self.default!r}")


def type_name(tp: Any) -> str:
    """`int`, `str | None`, `list[int]`, `'fcfs' | 'priority'`: an annotation as a user reads it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args if a is not ...)}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def parse_literal(text: str) -> Any:
    """An untyped option's value: an int, a float, true/false, or the text itself."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    return text


@cache
def _options(factory: Callable[..., Any]) -> tuple[Option, ...] | None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            return _compiled_options(factory)
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None  # takes anything: nothing to check against
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        # In field order: a dataclass on a compiled base (kvsched.compiled) gets the base's
        # fields as keyword-only, which inspect lists last.
        order = {f.name: i for i, f in enumerate(dataclasses.fields(factory))}
        params = dict(sorted(params.items(), key=lambda item: order.get(item[0], len(order))))
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 -- an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    out = []
    for p in params.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        tp = hints.get(p.name)
        if tp is None and p.default not in (_NO_DEFAULT, None):
            tp = type(p.default)
        out.append(Option(p.name, tp, p.default))
    return tuple(out)


def _compiled_options(cls: type) -> tuple[Option, ...]:
    """A dataclass compiled by Cython (kvsched.compiled) has no Python signature, and its fields
    carry the C types of its .pxd: its options are its init fields, typed by their defaults."""
    out = []
    for f in dataclasses.fields(cls):
        if f.init:
            default = _NO_DEFAULT if f.default is dataclasses.MISSING else f.default
            out.append(Option(f.name, None if default in (_NO_DEFAULT, None) else type(default), default))
    return tuple(out)


def options_of(factory: Callable[..., Any]) -> tuple[Option, ...] | None:
    """The factory's keyword options, or None when it takes **kwargs (anything)."""
    return _options(factory)


def _did_you_mean(name: str, names) -> str:
    """ "; did you mean 'x'?" with the closest of `names`, else ";" (the caller's text follows)."""
    import difflib  # only for an error: not imported by every start

    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ";"


class _Mismatch(Exception):
    """The value does not fit the type; the message says what was expected."""


def _expected(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _expected(a) for a in args)
    if origin is typing.Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return f"one of {type_name(tp)}"
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence:
        return f"a comma-separated list of {type_name(args[0]) if args else 'values'}"
    return f"a {type_name(tp)}"


def coerce(tp: Any, value: Any) -> Any:
    """`value` (command-line text or an already typed value, e.g. from TOML) as type `tp`.

    A value that already has the type is returned unchanged (an int is a valid float and
    stays an int, so configs and sweep cell ids keep what the user wrote)."""
    if tp is None or tp is Any:
        return parse_literal(value) if isinstance(value, str) else value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return coerce(arg, value)
                except _Mismatch:
                    pass
        raise _Mismatch(_expected(tp))
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise _Mismatch(_expected(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value in (member, member.value, member.name) or (isinstance(value, str) and value == str(member.value)):
                return member
        raise _Mismatch(_expected(tp))
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence:
        items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise _Mismatch(_expected(tp))
        inner = args[0] if args else None
        kind = list if origin is typing.Sequence else origin
        return kind(coerce(inner, x) for x in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch(_expected(tp))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _Mismatch(_expected(tp))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            for conv in (int, float):
                try:
                    return conv(value.strip())
                except ValueError:
                    pass
        raise _Mismatch(_expected(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(_expected(tp))
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, type) and isinstance(value, str):
        try:
            return tp(value)
        except Exception:  # noqa: BLE001, S110 -- any failure means: not this type
            pass
    raise _Mismatch(_expected(tp))


def check_options(what: str, factory: Callable[..., Any], options: dict[str, Any], *,
                  listing: str = "") -> dict[str, Any]:
    """`options` checked against `factory`'s keywords and coerced to their types.

    `what` names the factory in messages ("scheduler 'vllm'"); `listing` is where a user
    sees the options (e.g. "`kvsched schedulers vllm`"). Raises OptionError (one line)."""
    known = options_of(factory)
    if known is None:
        return {k: parse_literal(v) if isinstance(v, str) else v for k, v in options.items()}
    by_name = {o.name: o for o in known}
    see = f"; see {listing}" if listing else ""
    out = {}
    for key, value in options.items():
        option = by_name.get(key)
        if option is None:
            listed = ", ".join(o.describe() for o in known) if known else "none"
            raise OptionError(f"{what} has no option {key!r}{_did_you_mean(key, by_name)} its options: {listed}")
        try:
            out[key] = coerce(option.type, value)
        except _Mismatch as exc:
            default = "" if option.required else f" (default {option.default!r})"
            raise OptionError(f"{what}: option {key} wants {exc}{default}, got {value!r}{see}") from None
    return out


class Registry(Generic[T]):
    """Names -> factories of one kind.

    `home` names the package whose modules register this kind. Its modules are imported on
    demand, never by its `__init__`: a name not yet registered first imports the module named
    like it (`wait-cp` -> `wait_cp`, then `wait`, the part before the first dash), and if that
    does not register it, every module of the package in sorted order; a listing (`names`,
    `entries`) and an unknown name's error import them all, so they see every name. The hint
    only saves imports: a miss falls back to importing everything, so what a name resolves to
    never depends on it. Without `home`, the registry holds what was registered, as imported."""

    def __init__(self, kind: str, home: str | None = None) -> None:
        self.kind = kind
        self.home = home
        self._entries: dict[str, Entry[T]] = {}
        self._complete = home is None  # every module of `home` imported

    def register(self, name: str, description: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            # Default description: the first line of the docstring.
            text = description or ((factory.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, factory, text)
            return factory

        return decorate

    def home_modules(self) -> list[str]:
        """The modules of `home` (full names, sorted): what a complete registry has imported."""
        if self.home is None:
            return []
        package = importlib.import_module(self.home)
        if not hasattr(package, "__path__"):  # a plain module registers everything it holds
            return [self.home]
        import pkgutil  # only for a listing or a miss: not imported by every start

        return sorted(f"{self.home}.{m.name}" for m in pkgutil.iter_modules(package.__path__))

    def _import_all(self) -> None:
        if not self._complete:
            for module in self.home_modules():
                importlib.import_module(module)
            self._complete = True

    def _find(self, name: str) -> Entry[T] | None:
        entry = self._entries.get(name)
        if entry is not None or self._complete:
            return entry
        if hasattr(importlib.import_module(self.home), "__path__"):
            for stem in dict.fromkeys((name.replace("-", "_"), name.split("-")[0])):
                module = f"{self.home}.{stem}"
                if stem.isidentifier() and importlib.util.find_spec(module) is not None:
                    importlib.import_module(module)
                    if name in self._entries:
                        return self._entries[name]
        self._import_all()
        return self._entries.get(name)

    def get(self, name: str) -> Entry[T]:
        entry = self._find(name)
        if entry is None:
            known = ", ".join(sorted(self._entries))
            raise KeyError(f"unknown {self.kind} {name!r}{_did_you_mean(name, self._entries)} known: {known}")
        return entry

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name).factory(**kwargs)

    def options(self, name: str) -> tuple[Option, ...] | None:
        """The options `name`'s factory takes (None: it takes any keyword)."""
        return options_of(self.get(name).factory)

    def check_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """User-given options of `name`, checked and coerced (see `check_options`)."""
        return check_options(f"{self.kind} {name!r}", self.get(name).factory, options,
                             listing=f"`kvsched {self.kind.replace(' ', '-')}s {name}`")

    def names(self) -> list[str]:
        self._import_all()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return self._find(name) is not None


SCHEDULERS: Registry[Any] = Registry("scheduler", home="kvsched.schedulers")
# A trace factory returns new Request objects on every call: `build_workload` sets the
# predictions on the requests it loads instead of copying them.
TRACES: Registry[Any] = Registry("trace")
COST_MODELS: Registry[Any] = Registry("cost model")
ROUTERS: Registry[Any] = Registry("router")  # kvsched.cluster.routers
