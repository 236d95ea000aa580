"""A registry with a home package imports the package's modules on demand (kvsched.registry):
a name's module first, everything on a miss or a listing, and resolves every name as a registry
whose modules were all imported up front would."""

from __future__ import annotations

import importlib
import sys
from itertools import count

import pytest

_PACKAGES = count()

# module -> (names it registers, modules it imports first)
MODULES = {
    "alpha": (["alpha"], []),
    "beta": (["beta-two", "beta-three"], []),
    "delta": ([], []),  # named like a name it does not register
    "gamma": (["gamma"], ["alpha"]),
    "zeta": (["delta", "theta"], []),
}


@pytest.fixture
def plug(tmp_path, monkeypatch):
    """A fresh package `kvsched_test_plugN` with a registry `THINGS` whose home it is, and the modules of
    MODULES registering into it; `LOADED` lists the modules in the order they ran."""
    name = f"kvsched_test_plug{next(_PACKAGES)}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        "from kvsched.registry import Registry\n"
        f"THINGS = Registry('thing', home={name!r})\n"
        "LOADED = []\n")
    for module, (names, imports) in MODULES.items():
        lines = [f"from {name} import LOADED, THINGS", *(f"import {name}.{m}" for m in imports),
                 f"LOADED.append({module!r})"]
        for k, thing in enumerate(names):
            lines += ["", "", f"@THINGS.register({thing!r})", f"class Thing{k}:",
                      f"    '''{thing} from {module}'''"]
        (root / f"{module}.py").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def _everything(plug) -> dict[str, str]:
    return {n: plug.THINGS.get(n).factory.__module__.rsplit(".", 1)[1] for n in plug.THINGS.names()}


EVERY = {"alpha": "alpha", "beta-two": "beta", "beta-three": "beta", "gamma": "gamma", "delta": "zeta",
         "theta": "zeta"}


def test_the_package_file_imports_nothing(plug):
    assert plug.LOADED == []


def test_a_name_imports_the_module_named_like_it(plug):
    assert plug.THINGS.get("gamma").description == "gamma from gamma"
    assert plug.LOADED == ["alpha", "gamma"]  # gamma's own import of alpha, nothing else
    assert "alpha" in plug.THINGS  # registered already: no import
    assert plug.LOADED == ["alpha", "gamma"]


def test_a_dashed_name_imports_the_module_named_like_its_first_word(plug):
    assert "beta-three" in plug.THINGS
    assert plug.LOADED == ["beta"]


def test_a_hint_that_misses_falls_back_to_every_module_in_sorted_order(plug):
    # `delta` is the name of a module that registers nothing; zeta registers it.
    assert plug.THINGS.get("delta").description == "delta from zeta"
    assert plug.LOADED == ["delta", "alpha", "beta", "gamma", "zeta"]


def test_an_unknown_name_imports_everything_and_its_error_lists_every_name(plug):
    assert "alpha.beta" not in plug.THINGS  # not a module name: no hint, no error
    assert "nope" not in plug.THINGS
    assert sorted(plug.LOADED) == sorted(MODULES)
    with pytest.raises(KeyError) as exc:
        plug.THINGS.get("gama")
    assert exc.value.args[0] == ("unknown thing 'gama'; did you mean 'gamma'? known: "
                                 + ", ".join(sorted(EVERY)))


@pytest.mark.parametrize("first", ["names", "entries", *EVERY])
def test_every_order_of_questions_gives_the_same_answers(plug, first):
    if first == "names":
        plug.THINGS.names()
    elif first == "entries":
        plug.THINGS.entries()
    else:
        plug.THINGS.get(first)
    assert _everything(plug) == EVERY
    assert plug.THINGS.names() == sorted(EVERY)
    assert len(plug.LOADED) == len(MODULES)  # each module ran once


def test_a_registry_without_a_home_holds_what_was_registered():
    from kvsched.registry import Registry

    things = Registry("thing")
    things.register("one")(lambda: 1)
    assert things.names() == ["one"]
    assert "two" not in things
    with pytest.raises(KeyError, match="unknown thing 'two'; known: one"):
        things.get("two")
