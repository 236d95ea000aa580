"""Command-line errors: scheduler options, misspelt flags, and no Python names in messages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kvsched.cli import main
from kvsched.experiments.sweep import Grid, GridError

SYN = "synthetic:n=20,rate=5,prompt=64,output=8"
SRC = Path(__file__).resolve().parents[1] / "src" / "kvsched"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvsched: error: "), err
    return lines[0]


# --- scheduler options: one validator for -o, compare, sweep grids ------------------------------------


def test_misspelt_option_names_it_lists_options_and_suggests(capsys):
    line = one_line_error(capsys, "simulate", "--trace", SYN, "-o", "max_num_batched_token=4096", "--no-progress")
    assert "'max_num_batched_token'" in line and "did you mean 'max_num_batched_tokens'?" in line
    assert "max_num_seqs: int = 256" in line and "policy: str = 'fcfs'" in line
    assert "__init__" not in line and "keyword argument" not in line


def test_option_of_wrong_type_names_option_type_and_default(capsys):
    line = one_line_error(capsys, "simulate", "--trace", SYN, "-o", "max_num_batched_tokens=abc", "--no-progress")
    assert "max_num_batched_tokens" in line and "integer" in line and "2048" in line and "'abc'" in line
    assert "not supported between" not in line


def test_options_are_coerced_to_their_types(capsys):
    code, out, _ = run(capsys, "simulate", "--trace", SYN, "-o", "enable_chunked_prefill=no", "-o",
                       "max_num_seqs=4", "--no-progress", "--json")
    assert code == 0 and '"num_completed": 20' in out
    line = one_line_error(capsys, "simulate", "--trace", SYN, "-o", "enable_chunked_prefill=maybe", "--no-progress")
    assert "enable_chunked_prefill" in line and "true or false" in line


def test_compare_options_share_the_validator(capsys):
    line = one_line_error(capsys, "compare", "--trace", SYN, "--schedulers", "vllm,sarathi", "-o",
                          "sarathi:chunk_sz=64", "--no-progress")
    assert "did you mean 'chunk_size'?" in line and "chunk_size: int = 512" in line


def test_srpt_options_are_checked_too(capsys):
    line = one_line_error(capsys, "simulate", "--trace", SYN, "--scheduler", "srpt", "-o", "kee=output",
                          "--no-progress")
    assert "did you mean 'key'?" in line and "key: str = 'remaining'" in line


def test_sweep_grid_uses_the_same_validator():
    base = {"schedulers": ["sarathi"], "workload": {"trace": SYN}}
    with pytest.raises(GridError, match=r"options.sarathi: .*did you mean 'chunk_size'\?"):
        Grid.from_dict({**base, "options": {"sarathi": {"chunk_sz": 64}}}, source="g.toml")
    with pytest.raises(GridError, match=r"g.toml: options.sarathi: .*chunk_size wants an integer"):
        Grid.from_dict({**base, "options": {"sarathi": {"chunk_size": [64, "abc"]}}}, source="g.toml")
    grid = Grid.from_dict({**base, "options": {"sarathi": {"chunk_size": ["64", 128]}}}, source="g.toml")
    assert grid.options == {"sarathi": {"chunk_size": [64, 128]}}


def test_sweep_command_line_option_is_typed(capsys, tmp_path):
    line = one_line_error(capsys, "sweep", "--schedulers", "sarathi", "--trace", SYN, "--opt",
                          "sarathi:chunk_size=64,abc", "--output", str(tmp_path / "s"), "--no-progress")
    assert "chunk_size wants an integer" in line and "'abc'" in line


@pytest.mark.parametrize("argv", [["schedulers", "vllm"], ["schedulers", "--verbose"]])
def test_schedulers_lists_options_with_types_and_defaults(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "max_num_batched_tokens: int = 2048" in out and "enable_chunked_prefill: bool = True" in out
    if "--verbose" in argv:
        assert "chunk_size: int = 512" in out and "tl: int | None = None" in out


def test_unknown_scheduler_suggests_the_closest(capsys):
    line = one_line_error(capsys, "schedulers", "vlm")
    assert "unknown scheduler 'vlm'; did you mean 'vllm'?" in line


# --- misspelt flags: the subcommand's usage and the closest flag -------------------------------------


def test_misspelt_flag_prints_subcommand_usage_and_suggestion(capsys):
    code, _, err = run(capsys, "simulate", "--trace", SYN, "--capcity", "5")
    assert code == 2
    assert "usage: kvsched simulate" in err and "usage: kvsched [-h]" not in err
    assert err.strip().splitlines()[-1] == ("kvsched simulate: error: unrecognized arguments: --capcity 5; "
                                            "did you mean --capacity?")


def test_misspelt_subcommand_and_choice_suggest(capsys):
    _, _, err = run(capsys, "simulat", "--trace", SYN)
    assert "did you mean 'simulate'?" in err
    _, _, err = run(capsys, "plot", "x", "--kind", "latency-cfd")
    assert "usage: kvsched plot" in err and "did you mean 'latency-cdf'?" in err


# --- messages name commands and flags, not Python functions ----------------------------------------


@pytest.mark.parametrize("flag, value", [("--rate-scale", "0"), ("--length-scale", "-1"),
                                         ("--max-prompt-len", "0"), ("--num-requests", "0")])
def test_workload_flags_are_checked_by_name(capsys, flag, value):
    _, _, err = run(capsys, "trace-stats", "--trace", SYN, flag, value)
    last = err.strip().splitlines()[-1]
    assert last.startswith("kvsched trace-stats: error: argument " + flag), err
    assert not re.search(r"scale_rate|scale_lengths|clip_lengths|trace_stats", err)


def test_theory_bound_with_real_times_names_the_flags(capsys, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,5,6\n0.75,7,8\n")
    line = one_line_error(capsys, "bound", "--trace", str(path), "--theory", "--no-ip")
    assert "without --theory" in line and "volume_bound_seconds" not in line


def test_timed_trace_with_rate_names_rate_scale(capsys, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,5,6\n1,7,8\n")
    line = one_line_error(capsys, "simulate", "--trace", str(path), "--rate", "3", "--no-progress")
    assert "--rate-scale" in line


def test_fluid_with_one_arrival_instant_names_type_flag(capsys, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,5,6\n0,7,8\n")
    line = one_line_error(capsys, "fluid", "--trace", str(path))
    assert "--type" in line and "types_from_requests" not in line and "rate=" not in line


def _raise_messages():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = "".join(c.value for c in ast.walk(node.exc)
                               if isinstance(c, ast.Constant) and isinstance(c.value, str))
                yield f"{path.relative_to(SRC)}:{node.lineno}", text


def test_no_error_tells_a_user_to_call_a_python_function_without_the_flag():
    """'use volume_bound_seconds', 'pass rate=', 'use kvsched.x.y' must come with a CLI flag or command."""
    python_advice = re.compile(r"\b(use|call|pass)\s+(kvsched\.[\w.]+|[a-z]+_[a-z_]+\b(?!\s*=\s*[\w'\"])|\w+=\s*$)")
    bad = [f"{where}: {text}" for where, text in _raise_messages()
           if python_advice.search(text) and "--" not in text and "kvsched " not in text]
    assert not bad, "\n".join(bad)
