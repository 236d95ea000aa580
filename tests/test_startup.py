"""Start-up: `kvsched simulate --json` imports none of the heavy optional libraries, only the
scheduler module it runs, and builds only its own subcommand's parser, which parses and prints
help as the full parser does (docs/architecture.md, "Start-up and lazy imports")."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvsched
from kvsched.cli import build_parser

HEAVY = ("pandas", "pyarrow", "matplotlib", "scipy", "highspy", "rich")


def _imported_after(argv: list[str], modules: tuple[str, ...] = HEAVY) -> list[str]:
    code = (f"import kvsched.cli, sys; kvsched.cli.main({argv!r}); "
            f"print(sorted(m for m in {modules!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(kvsched.__file__).parents[1])}  # this checkout's kvsched
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def test_simulate_json_imports_no_heavy_library():
    argv = ["simulate", "--trace", "synthetic:n=5,rate=1,prompt=8,output=2", "--json", "--no-progress"]
    assert _imported_after(argv) == []


def test_simulate_on_a_shipped_trace_reads_it_without_pandas():
    argv = ["simulate", "--trace", "azure-conv", "--num-requests", "50", "--scheduler", "vllm", "--json",
            "--no-progress"]
    assert _imported_after(argv) == []


# Parts of kvsched a single-replica `simulate` does not need, imported on first use.
LAZY_PARTS = ("kvsched.cluster.simulate", "kvsched.cluster.disagg")


def test_single_replica_simulate_does_not_load_the_cluster_simulator():
    argv = ["simulate", "--trace", "synthetic:n=5,rate=1,prompt=8,output=2", "--json", "--no-progress"]
    assert _imported_after(argv, LAZY_PARTS) == []
    # ... which a cluster run does load, through the same package.
    assert _imported_after([*argv, "--replicas", "2"], LAZY_PARTS) == sorted(LAZY_PARTS)


def _registering_modules() -> list[str]:
    """Every module of kvsched.schedulers that registers a scheduler."""
    from kvsched.registry import SCHEDULERS

    return sorted({e.factory.__module__ for e in SCHEDULERS.entries()})


def test_simulate_imports_only_the_scheduler_module_it_runs():
    argv = ["simulate", "--trace", "synthetic:n=5,rate=1,prompt=8,output=2", "--scheduler", "vllm", "--json",
            "--no-progress"]
    modules = tuple(_registering_modules())
    assert len(modules) > 5  # the check below means something
    assert _imported_after(argv, modules) == ["kvsched.schedulers.vllm"]
    # ... nor the WAIT family's helpers and the fluid model, which only WAIT schedulers use, nor
    # difflib, which only an error's "did you mean" uses, nor numpy.ma (np.percentile's import) and
    # numpy.typing (annotations)
    unused = ("kvsched.schedulers.wait_common", "kvsched.bounds.fluid", "difflib", "numpy.ma", "numpy.typing")
    assert _imported_after(argv, unused) == []
    # A WAIT scheduler still gets its design options from the run (they land in its config).
    wait = ["simulate", "--trace", "synthetic:n=20,rate=1,prompt=8,output=2", "--scheduler", "wait", "--json",
            "--no-progress"]
    assert _imported_after(wait, ("kvsched.schedulers.wait_common",)) == ["kvsched.schedulers.wait_common"]


def _fresh(code: str) -> str:
    """stdout of `code` run in a fresh interpreter on this checkout's kvsched."""
    env = {**os.environ, "PYTHONPATH": str(Path(kvsched.__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


def test_listings_and_unknown_names_see_every_scheduler():
    # Every scheduler, as registered once every module of the package is imported.
    every = json.loads(_fresh(
        "import importlib, json, pkgutil, kvsched.schedulers as p\n"
        "from kvsched.registry import SCHEDULERS\n"
        "for m in sorted(pkgutil.iter_modules(p.__path__), key=lambda m: m.name):\n"
        "    importlib.import_module(f'kvsched.schedulers.{m.name}')\n"
        "print(json.dumps(sorted(SCHEDULERS._entries)))"))
    assert {"vllm", "sarathi", "wait-cp", "mcsf", "gba"} <= set(every)
    # A listing as the first thing a process does.
    assert json.loads(_fresh("import json; from kvsched.registry import SCHEDULERS; "
                             "print(json.dumps(SCHEDULERS.names()))")) == every
    listed = _fresh("import kvsched.cli; kvsched.cli.main(['schedulers', '--verbose'])")
    assert [line.split(":")[0] for line in listed.splitlines() if line and not line.startswith(" ")] == every
    # An unknown name: not found, and its error lists every name.
    message = _fresh("from kvsched.registry import SCHEDULERS\n"
                     "print('vlm' in SCHEDULERS)\n"
                     "try:\n    SCHEDULERS.get('vlm')\nexcept KeyError as exc:\n    print(exc.args[0])")
    found, error = message.splitlines()
    assert found == "False"
    assert error == f"unknown scheduler 'vlm'; did you mean 'vllm'? known: {', '.join(every)}"


def test_a_name_resolves_to_the_same_factory_whichever_module_is_imported_first():
    # Names whose module is named like them (the hint), named like their first word, or neither.
    names = ["vllm", "wait-cp", "vidur-vllm", "sarathi", "gba-sync", "sorted-f"]
    code = ("import json, sys; from kvsched.registry import SCHEDULERS\n"
            "f = SCHEDULERS.get(sys.argv[1]).factory\n"
            "print(json.dumps([f.__module__, f.__qualname__]))")
    env = {**os.environ, "PYTHONPATH": str(Path(kvsched.__file__).parents[1])}
    from kvsched.registry import SCHEDULERS

    for name in names:
        out = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, check=True,
                             env=env).stdout
        factory = SCHEDULERS.get(name).factory
        assert json.loads(out) == [factory.__module__, factory.__qualname__], name


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(sub.choices) if sub is not None else {}


def _same(value):
    """A value as two separately built parsers can share it: a function (a per-build closure such
    as `positive(int)`) by its qualified and given names."""
    if callable(value) and not isinstance(value, type):
        return ("function", value.__module__, value.__qualname__, value.__name__)
    return repr(value)


def _shape(parser: argparse.ArgumentParser) -> list:
    """Everything that decides how `parser` (and its own subcommands) parse and print help."""
    actions = [(type(a).__name__, a.option_strings, a.dest, a.nargs, _same(a.const), _same(a.default), _same(a.type),
                list(a.choices) if isinstance(a, argparse._SubParsersAction) else _same(a.choices), a.required,
                a.help, a.metavar) for a in parser._actions]
    nested = [(name, _shape(p)) for name, p in _subparsers(parser).items()]
    return [parser.prog, parser.format_usage(), parser.format_help(),
            sorted((k, _same(v)) for k, v in parser._defaults.items()), actions, nested]


def test_the_parser_of_one_subcommand_equals_the_full_parsers():
    full = build_parser()
    commands = _subparsers(full)
    assert {"simulate", "compare", "model", "sweep", "validate-vllm", "routers"} <= set(commands)
    for name, parser in commands.items():
        only = build_parser(name)
        # The top level (usage, help, the choices its errors list) is the same ...
        assert only.format_help() == full.format_help()
        assert list(_subparsers(only)) == list(commands)
        # ... and so is the subcommand's own parser, nested actions included (model export).
        assert _shape(_subparsers(only)[name]) == _shape(parser), name


@pytest.mark.parametrize("argv", [
    ["simulat", "--trace", "x"],
    ["simulate", "--capcity", "5", "--trace", "x"],
    ["simulate"],
    ["model", "exprt"],
    ["--nope"],
])
def test_errors_of_the_one_subcommand_parser_are_the_full_parsers(argv, capsys):
    messages = []
    for parser in (build_parser(), build_parser(argv[0])):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        messages.append((exc.value.code, capsys.readouterr().err))
    assert messages[0][0] == 2
    assert messages[0][1].startswith("usage: kvsched")
    assert messages[1] == messages[0]
