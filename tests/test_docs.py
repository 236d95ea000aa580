"""What users read must stand on its own: no pointers to the implementation specs.

The specs the project was built from live outside the repository, so README, docs/,
examples/, benchmarks/, every string literal and docstring under src/, and what the CLI
and the report generator print must cite the papers (and their sections) or a docs/ page,
never `shared/...`, `spec §12.2`, `spec A13`, `wait.md §7` or "the spec's ...".
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A docs page called wait.md or mcsf.md is fine (docs/wait.md, [mcsf.md](mcsf.md));
# a spec file cited with a section or an ambiguity tag is not.
SPEC_REFERENCE = re.compile(
    r"shared/"
    r"|\bspecs/"
    r"|\bspec\b\W{0,3}(§|section|sections|A\d|\d|wait\b|mcsf\b|gsa|baselines|table)"
    r"|\bthe spec\b(?!\s+(such as|gives|says otherwise))"
    r"|\bspec['’]s\b"
    r"|(?<![/\w])(wait|mcsf|gsa_gba|baselines)\.md\b\s*(§|section|,?\s*A\d)"
    r"|\bAmbiguit(y|ies)\s+\d"
    r"|\bA(1\d|2[0-4]|[1-9])b?\)?,\s*A\d"  # lists of ambiguity tags: "A3, A3b"
    r"|\((spec\s+)?A(1\d|2[0-4]|[2-9])b?[,)]",  # "(A13)", "(A3, ...": ambiguity tags
    re.IGNORECASE,
)


def offending_lines(text: str) -> list[tuple[int, str]]:
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if SPEC_REFERENCE.search(line)]


def text_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("examples", "benchmarks"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in (".md", ".toml", ".txt")]
    return files


def python_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal and docstring in a Python file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for k, line in enumerate(node.value.splitlines() or [""]):
                out.append((node.lineno + k, line))
    return out


def python_files() -> list[Path]:
    return sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))


def test_pattern_catches_spec_references() -> None:
    for bad in ("see shared/specs/wait.md", "spec §12.2", "(spec A13)", "spec wait.md §7", "wait.md §12.2.1 (E1)",
                "the spec's ±2 req/s rule", "Spec: `shared/specs/x`", "Ambiguity 26", "spec 10.1", "(A2, A3b)"):
        assert SPEC_REFERENCE.search(bad), bad
    for good in ("see [docs/wait.md](docs/wait.md)", "[mcsf.md](mcsf.md)", "a synthetic spec such as",
                 "the rate the spec gives", "A100-80GB", "traces/spec.py", "spec = find_spec(name)"):
        assert not SPEC_REFERENCE.search(good), good


def test_docs_and_examples_cite_papers_not_specs() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}: {line}" for p in text_files() for i, line in offending_lines(p.read_text())]
    assert not hits, "references to the out-of-repo specs:\n" + "\n".join(hits)


def test_source_strings_cite_papers_not_specs() -> None:
    hits = []
    for p in python_files():
        hits += [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for i, line in python_strings(p)
                 if SPEC_REFERENCE.search(line)]
    assert not hits, "references to the out-of-repo specs in strings and docstrings:\n" + "\n".join(hits)


def test_cost_models_listing_cites_papers_not_specs() -> None:
    out = subprocess.run([sys.executable, "-m", "kvsched.cli", "cost-models"], capture_output=True, text=True,
                         check=True).stdout
    assert "wait-paper" in out
    assert not offending_lines(out), out


def test_reproduction_report_cites_papers_not_specs(tmp_path) -> None:
    import pandas as pd

    from kvsched.experiments.reproduce import Findings, Result, registry, render_report

    for entry in registry().values():
        findings = Findings(table=pd.DataFrame(), table_note="t", settings={}, comparisons=[], figures=[],
                            differences=["d"], reasons=["r"], headline={})
        result = Result(name=entry.name, out=tmp_path, report=tmp_path / "report.md", findings=findings,
                        wall_time_s=1.0, tasks_run=1, tasks_reused=0)
        text = render_report(entry, result, "default")
        assert not offending_lines(text), (entry.name, offending_lines(text))


# --- README says what the commands print -----------------------------------------------------------
def kvsched(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "kvsched.cli", *args], capture_output=True, text=True,
                          check=True).stdout


def test_default_capacity_is_rounded_to_whole_blocks_as_readme_says() -> None:
    import json

    readme = (ROOT / "README.md").read_text()
    assert "default 137,000" in readme and "137,000 // 16 × 16 = 136,992" in readme
    out = kvsched("simulate", "--trace", "azure-conv", "--num-requests", "20", "--scheduler", "vllm",
                  "--no-progress", "--json")
    assert json.loads(out)["capacity_tokens"] == 137_000 // 16 * 16 == 136_992


def test_bound_prints_what_readme_lists_per_mode(tmp_path) -> None:
    import json

    readme = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `kvsched bound"))
    trace = kvsched("bound", "--trace", "azure-conv", "--capacity", "137000", "--num-requests", "20", "--json")
    assert [b["name"] for b in json.loads(trace)["bounds"]] == ["volume"]
    assert "Without `--theory`" in readme and "it prints one bound, `volume`, in seconds" in readme

    csv = tmp_path / "t.csv"
    csv.write_text("arrival_time,prompt_len,output_len\n0,2,3\n0,1,4\n1,2,2\n2,1,5\n")
    theory = json.loads(kvsched("bound", "--trace", str(csv), "--capacity", "12", "--theory", "--json"))
    names = [b["name"] for b in theory["bounds"]]
    assert {"sum-output", "volume", "waste", "lp"} <= set(names) <= {
        "sum-output", "volume", "waste", "lemma-4.7", "lp", "ip-dual", "cpsat-bound"}
    assert theory["optimum"] is not None
    for name in names:
        assert f"`{name}`" in readme, name
