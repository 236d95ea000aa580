"""plot_runs on real saved run directories (save_run output, Parquet and CSV)."""

from __future__ import annotations

import matplotlib
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from kvsched.plots import KINDS, plot_runs
from kvsched.registry import SCHEDULERS
from kvsched.results import save_run
from kvsched.sim import simulate
from kvsched.sim.cost import UnitCost
from kvsched.traces import parse_synthetic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two saved runs of one small workload: vllm as Parquet, sarathi as CSV."""
    base = tmp_path_factory.mktemp("runs")
    workload = parse_synthetic("synthetic:n=60,rate=4,prompt=uniform(50,300),output=uniform(5,40)",
                               np.random.default_rng(0))
    dirs = []
    for name, fmt in (("vllm", "parquet"), ("sarathi", "csv")):
        run = simulate(workload, SCHEDULERS.create(name), UnitCost(0.01), capacity_tokens=2000, block_size=16)
        d = base / f"run-{name}"
        save_run(run, d, {"scheduler": {"name": name}}, format=fmt)
        dirs.append(d)
    return dirs


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_writes_a_png(runs, tmp_path, kind):
    out = tmp_path / "nested" / "dir" / f"{kind}.png"  # missing parents are created
    figs_before = plt.get_fignums()
    assert plot_runs(runs, kind, out) == out
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    image = mpimg.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600  # 7 x 4.2 in at 120 dpi = 840 x 504 px
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # curves, text: not a blank canvas
    assert plt.get_fignums() == figs_before  # the figure is closed


@pytest.mark.parametrize("kind", KINDS)
def test_labels_come_from_config_and_a_single_run_plots(runs, tmp_path, kind):
    out = tmp_path / f"{kind}.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text to search it
        plot_runs(runs, kind, out)
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml")
    assert ">vllm<" in svg and ">sarathi<" in svg
    pdf = plot_runs(runs[:1], kind, tmp_path / f"{kind}.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_bad_kind_raises_value_error(runs, tmp_path):
    with pytest.raises(ValueError, match=r"kind must be one of latency-cdf, ttft-cdf, kv-usage, got 'pie'"):
        plot_runs(runs, "pie", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_non_run_directory_raises_file_not_found(tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"not-a-run/config\.json: missing \(is it a kvsched run directory\?\)"):
        plot_runs([empty], "latency-cdf", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_run_directory_without_tables_raises_file_not_found(tmp_path, runs):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((runs[0] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no requests.parquet or requests.csv"):
        plot_runs([runs[0], partial], "ttft-cdf", tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no steps.parquet or steps.csv"):
        plot_runs([partial], "kv-usage", tmp_path / "y.png")


def test_failed_plot_leaks_no_figure(tmp_path):
    before = plt.get_fignums()
    with pytest.raises(FileNotFoundError):
        plot_runs([tmp_path], "latency-cdf", tmp_path / "x.png")
    assert plt.get_fignums() == before
