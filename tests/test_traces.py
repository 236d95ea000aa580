"""Tests for kvsched.traces: shipped traces, validation, synthetic workloads, transforms, stats."""

from __future__ import annotations

import gzip
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.registry import TRACES
from kvsched.traces import (
    SHIPPED_TRACES,
    Empirical,
    Geometric,
    LogNormal,
    RequestType,
    TraceError,
    UniformInt,
    batch_arrivals,
    clip_lengths,
    gamma_arrivals,
    head,
    load_csv,
    load_trace,
    mixture,
    parse_synthetic,
    poisson_arrivals,
    requests_from_arrays,
    sample,
    scale_lengths,
    scale_rate,
    synthetic_workload,
    trace_stats,
)

SHARED_TRACES = Path("/work/shared/data/traces")
LENGTH_ONLY = {"arxiv-summarization", "sharegpt-8k"}


def _load(name: str, seed: int = 0):
    if name in LENGTH_ONLY:
        return load_trace(name, rng=np.random.default_rng(seed), rate=5.0)
    return load_trace(name)


def _arrays(reqs):
    return (
        np.array([r.arrival_time for r in reqs]),
        np.array([r.prompt_len for r in reqs]),
        np.array([r.output_len for r in reqs]),
    )


# --- shipped traces ------------------------------------------------------------------------


def test_registered_names():
    assert set(TRACES.names()) >= {
        "azure-conv", "azure-code", "vidur-splitwise-conv", "vidur-splitwise-code",
        "arxiv-summarization", "sharegpt-8k", "mooncake-conv", "mooncake-synthetic",
    }


@pytest.mark.parametrize("trace", SHIPPED_TRACES, ids=lambda t: t.name)
def test_shipped_trace_loads_with_documented_count(trace):
    reqs = _load(trace.name)
    assert len(reqs) == trace.num_requests
    assert f"{trace.num_requests:,}" in TRACES.get(trace.name).description
    assert [r.request_id for r in reqs] == list(range(len(reqs)))
    times, prompts, outputs = _arrays(reqs)
    assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
    assert prompts.min() >= 1 and outputs.min() >= 1
    # Plain Python numbers, not numpy scalars, reach Request.
    assert type(reqs[1].arrival_time) is float and type(reqs[1].prompt_len) is int


@pytest.mark.parametrize("trace", SHIPPED_TRACES, ids=lambda t: t.name)
def test_shipped_file_is_deterministic_gzip_of_shared_copy(trace):
    data = files("kvsched.traces").joinpath("data", trace.file_name).read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip -n: no timestamp in the header
    original = SHARED_TRACES / trace.file_name.removesuffix(".gz")
    if not original.exists():
        pytest.skip("shared data directory not available")
    assert gzip.decompress(data) == original.read_bytes()


@pytest.mark.parametrize("kind", ["conv", "code"])
def test_azure_and_vidur_hold_the_same_requests(kind):
    azure, vidur = load_trace(f"azure-{kind}"), load_trace(f"vidur-splitwise-{kind}")
    (ta, pa, oa), (tv, pv, ov) = _arrays(azure), _arrays(vidur)
    assert np.array_equal(pa, pv) and np.array_equal(oa, ov)
    assert np.max(np.abs(ta - tv)) < 1e-6


# name: rows, prompt mean/p50/max, output mean/p50/max, rate, cv (data README, summary table)
README_STATS = {
    "azure-conv": (19366, 1155, 1020, 14050, 211, 129, 1000, 5.53, 1.09),
    "azure-code": (8819, 2048, 1469, 7437, 27.9, 13, 1899, 2.57, 13.15),
    "mooncake-conv": (12031, 12035, 6909, 126195, 343, 350, 2000, 3.40, 3.03),
    "mooncake-synthetic": (3993, 15325, 11587, 191378, 149, 69, 893, 3.91, 1.01),
    "arxiv-summarization": (28257, 2588, 2730, 4054, 291, 167, 4056, None, None),
    "sharegpt-8k": (30731, 2340, 1730, 8141, 439, 415, 1024, None, None),
}


@pytest.mark.parametrize("name", sorted(README_STATS))
def test_trace_stats_match_data_readme(name):
    rows, p_mean, p50, p_max, o_mean, o50, o_max, rate, cv = README_STATS[name]
    stats = trace_stats(_load(name))
    assert stats["num_requests"] == rows
    assert stats["prompt_len_mean"] == pytest.approx(p_mean, rel=0.005)
    assert stats["prompt_len_p50"] == pytest.approx(p50, abs=0.5)
    assert stats["prompt_len_max"] == p_max
    assert stats["output_len_mean"] == pytest.approx(o_mean, rel=0.005)
    assert stats["output_len_p50"] == pytest.approx(o50, abs=0.5)
    assert stats["output_len_max"] == o_max
    assert stats["total_tokens"] == stats["total_prompt_tokens"] + stats["total_output_tokens"]
    if rate is not None:
        assert stats["rate_per_s"] == pytest.approx(rate, abs=0.006)
        assert stats["interarrival_cv"] == pytest.approx(cv, abs=0.006)
        assert stats["span_time_s"] == pytest.approx(rows / stats["rate_per_s"])


def test_length_only_trace_needs_rate_and_rng_and_is_seeded():
    with pytest.raises(TraceError, match="rate"):
        load_trace("sharegpt-8k", rng=np.random.default_rng(0))
    with pytest.raises(TraceError, match="Generator"):
        load_trace("sharegpt-8k", rate=5.0)
    a, b, c = _load("sharegpt-8k", 1), _load("sharegpt-8k", 1), _load("sharegpt-8k", 2)
    assert np.array_equal(_arrays(a)[0], _arrays(b)[0])
    assert not np.array_equal(_arrays(a)[0], _arrays(c)[0])
    gamma = TRACES.create("sharegpt-8k", rng=np.random.default_rng(0), rate=5.0, arrival="gamma", cv=3.0)
    assert trace_stats(gamma)["interarrival_cv"] == pytest.approx(3.0, rel=0.15)


def test_timed_trace_refuses_a_rate():
    with pytest.raises(TraceError, match="scale_rate"):
        load_trace("azure-conv", rate=2.0)


def test_unknown_name_is_an_error():
    with pytest.raises(TraceError, match="azure-conv"):
        load_trace("no-such-trace")


# --- files and validation -------------------------------------------------------------------

GENERIC = "arrival_time,prompt_len,output_len"
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens"
VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens"
MOONCAKE = "timestamp_ms,input_length,output_length,hash_ids"
LENGTHS = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio"


def _write(tmp_path: Path, header: str, rows: list[str], name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_formats_are_detected_from_the_header(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        GENERIC: ["10.5,100,10", "11.0,200,20"],
        AZURE: ["2023-11-16 18:15:46.6805900,100,10", "2023-11-16 18:15:47.1805900,200,20"],
        VIDUR: ["10.5,100,10", "11.0,200,20"],
        MOONCAKE: ["10500,100,10,0 1", "11000,200,20,2"],
    }
    for i, (header, rows) in enumerate(cases.items()):
        reqs = load_trace(str(_write(tmp_path, header, rows, f"t{i}.csv")))
        assert [(r.arrival_time, r.prompt_len, r.output_len) for r in reqs] == [(0.0, 100, 10), (0.5, 200, 20)]
    lengths = load_trace(str(_write(tmp_path, LENGTHS, ["100,10,110,10", "200,20,220,10"])), rng=rng, rate=1.0)
    assert [(r.prompt_len, r.output_len) for r in lengths] == [(100, 10), (200, 20)]


def test_gzip_csv_path_loads(tmp_path):
    path = tmp_path / "trace.csv.gz"
    path.write_bytes(gzip.compress(f"{GENERIC}\n0,5,6\n2,7,8\n".encode()))
    assert [r.arrival_time for r in load_csv(path)] == [0.0, 2.0]


def test_azure_timestamps_keep_100ns_and_cross_midnight(tmp_path):
    rows = ["2023-11-16 23:59:59.9999999,1,1", "2023-11-17 00:00:00.0000001,1,1", "2023-11-17 00:00:00.0000002,1,1"]
    times = [r.arrival_time for r in load_trace(str(_write(tmp_path, AZURE, rows)))]
    assert times == pytest.approx([0.0, 2e-7, 3e-7], abs=1e-12)


# (header, data rows, bad line number with header = line 1, column, text of the value)
MALFORMED = {
    "missing": (GENERIC, ["0,10,5", "1,,5"], 3, "prompt_len", "missing"),
    "negative": (GENERIC, ["0,10,5", "1,-3,5"], 3, "prompt_len", "-3"),
    "zero": (VIDUR, ["0,10,5", "1,3,0"], 3, "num_decode_tokens", "got 0"),
    "nan": (GENERIC, ["0,10,5", "1,2,5", "2,NaN,5"], 4, "prompt_len", "NaN"),
    "fraction": (AZURE, ["2023-11-16 18:15:46.6805900,12.5,5"], 2, "ContextTokens", "12.5"),
    "text": (MOONCAKE, ["0,10,5,1", "1,abc,5,2"], 3, "input_length", "'abc'"),
    "lengths-only": (LENGTHS, ["10,5,15,2", "0,5,5,0"], 3, "num_prefill_tokens", "got 0"),
    "backwards-generic": (GENERIC, ["0,10,5", "2,10,5", "1,10,5"], 4, "arrival_time", "backwards"),
    "backwards-vidur": (VIDUR, ["0.5,10,5", "0.25,10,5"], 3, "arrived_at", "backwards"),
    "backwards-mooncake": (MOONCAKE, ["0,10,5,1", "5,10,5,2", "5,1,1,3", "3,1,1,4"], 5, "timestamp_ms", "backwards"),
    "backwards-azure": (AZURE, ["2023-11-16 18:15:46.6805900,1,1", "2023-11-16 18:15:46.6805899,1,1"], 3,
                        "TIMESTAMP", "18:15:46.6805899"),
    "bad-timestamp": (AZURE, ["2023-11-16 18:15:46.6805900,1,1", "yesterday,1,1"], 3, "TIMESTAMP", "'yesterday'"),
    "negative-time": (GENERIC, ["-1,10,5"], 2, "arrival_time", "-1"),
    "blank-line-inside": (GENERIC, ["0,10,5", "", "1,10,5"], 3, "prompt_len", "missing"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_row_names_file_line_field_and_value(tmp_path, case):
    header, rows, line, column, value_text = MALFORMED[case]
    path = _write(tmp_path, header, rows, f"bad_{case}.csv")
    with pytest.raises(TraceError) as info:
        load_trace(str(path), rng=np.random.default_rng(0), rate=1.0 if header == LENGTHS else None)
    message = str(info.value)
    assert path.name in message and f"line {line} " in message and repr(column) in message, message
    assert value_text in message, message


def test_unknown_header_lists_accepted_formats(tmp_path):
    with pytest.raises(TraceError) as info:
        load_trace(str(_write(tmp_path, "time,in,out", ["0,1,1"])))
    assert "'time'" in str(info.value)  # the header it found
    for columns in ("arrival_time, prompt_len, output_len", "TIMESTAMP, ContextTokens", "timestamp_ms"):
        assert columns in str(info.value)


def test_other_malformed_files(tmp_path):
    with pytest.raises(TraceError, match="no data rows"):
        load_trace(str(_write(tmp_path, GENERIC, [], "empty.csv")))
    with pytest.raises(TraceError, match="line 2"):
        load_trace(str(_write(tmp_path, GENERIC, ["0,1,2,3"], "long_first.csv")))
    with pytest.raises(TraceError, match="line 3"):
        load_trace(str(_write(tmp_path, GENERIC, ["0,1,2", "1,1,2,3"], "long_later.csv")))
    # Trailing blank lines are not rows.
    assert len(load_trace(str(_write(tmp_path, GENERIC, ["0,1,2", "1,1,2", "", ""], "trailing.csv")))) == 2


# --- synthetic workloads ----------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: poisson_arrivals(100, 5.0, rng),
        lambda rng: gamma_arrivals(100, 5.0, 2.0, rng),
        lambda rng: UniformInt(1, 1000).sample(100, rng),
        lambda rng: Geometric(50).sample(100, rng),
        lambda rng: LogNormal(5, 1).sample(100, rng),
        lambda rng: np.concatenate(mixture([RequestType(1, 2, 1), RequestType(3, 4, 1)], 100, rng)),
        lambda rng: _arrays(synthetic_workload(100, rng=rng, rate=5, prompt=UniformInt(1, 9), output=Geometric(9))),
        lambda rng: _arrays(parse_synthetic("synthetic:n=100,rate=5,prompt=uniform(1,99),output=20", rng)),
    ],
)
def test_synthetic_draws_are_seeded(draw):
    assert np.array_equal(draw(_rng(7)), draw(_rng(7)))
    assert not np.array_equal(draw(_rng(7)), draw(_rng(8)))


def test_poisson_arrivals_rate_and_cv():
    times = poisson_arrivals(20_000, 5.0, _rng())
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert (len(times) - 1) / times[-1] == pytest.approx(5.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_arrivals_rate_and_cv(cv):
    gaps = np.diff(gamma_arrivals(20_000, 2.0, cv, _rng()))
    assert gaps.mean() == pytest.approx(0.5, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_gamma_with_cv_zero_is_evenly_spaced_and_batch_is_all_at_zero():
    assert np.allclose(np.diff(gamma_arrivals(10, 4.0, 0.0, _rng())), 0.25)
    assert np.array_equal(batch_arrivals(5), np.zeros(5))


def test_length_distributions():
    rng = _rng()
    uniform = UniformInt(3, 5).sample(10_000, rng)
    assert set(uniform.tolist()) == {3, 4, 5}
    geometric = Geometric(40).sample(20_000, rng)
    assert geometric.min() >= 1 and geometric.mean() == pytest.approx(40, rel=0.03)
    lognormal = LogNormal(5, 1).sample(20_000, rng)
    assert lognormal.min() >= 1 and np.median(lognormal) == pytest.approx(np.exp(5), rel=0.05)
    assert LogNormal(-5, 0.1).sample(100, rng).min() == 1  # clipped up to 1, never 0
    values = np.array([7, 70, 700])
    assert set(Empirical(values).sample(1000, rng).tolist()) == {7, 70, 700}
    with pytest.raises(TraceError):
        UniformInt(0, 5)


def test_mixture_follows_weights():
    prompts, outputs = mixture([RequestType(512, 20, 0.7), RequestType(512, 50, 0.3)], 20_000, _rng())
    assert set(prompts.tolist()) == {512}
    assert np.mean(outputs == 20) == pytest.approx(0.7, abs=0.02)


def test_synthetic_workload_needs_lengths_and_rng():
    with pytest.raises(TraceError, match="prompt"):
        synthetic_workload(10, rng=_rng(), rate=1.0, prompt=5)
    with pytest.raises(TraceError, match="Generator"):
        synthetic_workload(10, rng=None, rate=1.0, prompt=5, output=5)
    with pytest.raises(TraceError, match="cv"):
        synthetic_workload(10, rng=_rng(), rate=1.0, cv=2.0, prompt=5, output=5)


def test_spec_examples_from_the_docs():
    reqs = parse_synthetic("synthetic:n=1000,rate=5,prompt=512,output=20", _rng())
    assert len(reqs) == 1000 and {(r.prompt_len, r.output_len) for r in reqs} == {(512, 20)}
    assert trace_stats(reqs)["rate_per_s"] == pytest.approx(5, rel=0.1)

    spec = "synthetic:n=1000,rate=5,arrival=gamma,cv=2,prompt=uniform(100,1000),output=lognormal(5,1)"
    direct = synthetic_workload(1000, rng=_rng(3), arrival="gamma", rate=5, cv=2,
                                prompt=UniformInt(100, 1000), output=LogNormal(5, 1))
    assert [_arrays(parse_synthetic(spec, _rng(3)))[i].tolist() for i in range(3)] == \
        [_arrays(direct)[i].tolist() for i in range(3)]

    batch = load_trace("synthetic:n=100,arrival=batch,types=512x20:0.7|512x50:0.3", rng=_rng())
    assert all(r.arrival_time == 0.0 for r in batch) and {r.output_len for r in batch} == {20, 50}

    empirical = parse_synthetic("n=500,rate=2,prompt=empirical(azure-code),output=geometric(30)", _rng())
    code_prompts = {r.prompt_len for r in load_trace("azure-code")}
    assert {r.prompt_len for r in empirical} <= code_prompts


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("synthetic:n=10,rate=5,prompt=5,output=5,seed=3", "'seed'"),
        ("synthetic:n=10,rate=5,prompt=5,output=5,rate=6", "'rate' given twice"),
        ("synthetic:rate=5,prompt=5,output=5", "'n'"),
        ("synthetic:n=10,rate=5,prompt=zipf(2),output=5", "'zipf'"),
        ("synthetic:n=10,rate=5,prompt=uniform(5),output=5", "uniform takes 2"),
        ("synthetic:n=10,rate=fast,prompt=5,output=5", "rate='fast'"),
        ("synthetic:n=10,arrival=batch,types=512by20", "512by20"),
        ("synthetic:n=10,arrival=batch,rate=3,prompt=5,output=5", "batch"),
        ("synthetic:n=10,prompt=5,output=5", "rate"),
    ],
)
def test_bad_specs_name_the_problem(spec, needle):
    with pytest.raises(TraceError) as info:
        parse_synthetic(spec, _rng())
    assert needle in str(info.value) and spec in str(info.value)


# --- transforms ----------------------------------------------------------------------------

_traces = st.lists(
    st.tuples(st.floats(0, 100), st.integers(1, 5000), st.integers(1, 500)), min_size=1, max_size=50
).map(lambda rows: requests_from_arrays(np.cumsum([g for g, _, _ in rows]) - rows[0][0],
                                         [p for _, p, _ in rows], [o for _, _, o in rows]))


@settings(max_examples=50, deadline=None)
@given(_traces, st.floats(0.01, 100))
def test_scale_rate_divides_times_and_keeps_order(reqs, factor):
    scaled = scale_rate(reqs, factor)
    assert len(scaled) == len(reqs) and [r.request_id for r in scaled] == list(range(len(reqs)))
    assert [r.arrival_time for r in scaled] == pytest.approx([r.arrival_time / factor for r in reqs])
    assert [(r.prompt_len, r.output_len) for r in scaled] == [(r.prompt_len, r.output_len) for r in reqs]
    assert all(a is not b for a, b in zip(scaled, reqs))


@settings(max_examples=50, deadline=None)
@given(_traces, st.data())
def test_sample_and_head_keep_arrival_order(reqs, data):
    n = data.draw(st.integers(1, len(reqs)))
    kept = sample(reqs, n, np.random.default_rng(data.draw(st.integers(0, 2**32))))
    times = [r.arrival_time for r in kept]
    assert len(kept) == n and times == sorted(times) and times[0] == 0.0
    assert [r.request_id for r in kept] == list(range(n))
    # Each kept request is one of the originals: same gaps (after the shift) and lengths.
    originals = {(r.prompt_len, r.output_len) for r in reqs}
    assert {(r.prompt_len, r.output_len) for r in kept} <= originals
    first = head(reqs, n)
    assert [(r.arrival_time, r.prompt_len) for r in first] == [(r.arrival_time, r.prompt_len) for r in reqs[:n]]


@settings(max_examples=50, deadline=None)
@given(_traces, st.floats(0.001, 10), st.floats(0.001, 10), st.integers(1, 1000), st.integers(1, 100))
def test_length_transforms_round_and_clip(reqs, prompt_factor, output_factor, max_prompt, max_output):
    scaled = scale_lengths(reqs, prompt_factor, output_factor)
    for old, new in zip(reqs, scaled):
        assert new.prompt_len == max(1, round(old.prompt_len * prompt_factor))
        assert new.output_len == max(1, round(old.output_len * output_factor))
    clipped = clip_lengths(reqs, max_prompt, max_output)
    assert all(c.prompt_len == min(r.prompt_len, max_prompt) and c.output_len == min(r.output_len, max_output)
               for r, c in zip(reqs, clipped))


def test_transforms_leave_inputs_untouched_and_check_arguments():
    reqs = synthetic_workload(20, rng=_rng(), rate=1.0, prompt=100, output=10)
    before = [(r.request_id, r.arrival_time, r.prompt_len, r.output_len) for r in reqs]
    scale_rate(reqs, 2.0), scale_lengths(reqs, 2.0, 0.5), clip_lengths(reqs, 50, 5), sample(reqs, 5, _rng())
    assert [(r.request_id, r.arrival_time, r.prompt_len, r.output_len) for r in reqs] == before
    for bad in (lambda: scale_rate(reqs, 0), lambda: sample(reqs, 21, _rng()), lambda: clip_lengths(reqs, 0)):
        with pytest.raises(TraceError):
            bad()


def test_trace_stats_small_hand_computed():
    reqs = requests_from_arrays(np.array([0.0, 1.0, 3.0]), np.array([10, 20, 30]), np.array([1, 2, 3]))
    stats = trace_stats(reqs)
    assert stats["span_time_s"] == 3.0 and stats["rate_per_s"] == 1.0
    assert stats["interarrival_cv"] == pytest.approx(0.5 / 1.5)  # gaps 1 and 2
    assert (stats["prompt_len_mean"], stats["prompt_len_p50"], stats["prompt_len_max"]) == (20.0, 20.0, 30)
    assert stats["total_tokens"] == 66
    assert np.isnan(trace_stats(requests_from_arrays(np.zeros(3), [1, 1, 1], [1, 1, 1]))["rate_per_s"])


# --- the pandas-free reader of simple files (loaders._simple_table) agrees with pandas ----
def _both_readers(path, fmt):
    from kvsched.traces.loaders import _read_table_pandas, _simple_table
    from kvsched.traces.reading import read_simple_csv

    simple = read_simple_csv(path)
    fast = _simple_table(simple, fmt, "f") if simple is not None else None
    return fast, _read_table_pandas(path, fmt, "f")


def _assert_same_table(fast, slow):
    assert fast is not None, "the simple reader gave up on a file it should read"
    for a, b in ((fast.arrival_times_s, slow.arrival_times_s), (fast.prompt_lens, slow.prompt_lens),
                 (fast.output_lens, slow.output_lens)):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert fast.prefix_block_ids == slow.prefix_block_ids
    assert fast.prefix_block_size == slow.prefix_block_size


@pytest.mark.parametrize("trace", SHIPPED_TRACES, ids=lambda t: t.name)
def test_shipped_traces_read_without_pandas_equal_the_pandas_reader(trace):
    path = files("kvsched.traces").joinpath("data", trace.file_name)
    _assert_same_table(*_both_readers(path, trace.fmt))


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_simple_reader_equals_pandas_on_generated_files(tmp_path, suffix, newline):
    from kvsched.traces.loaders import AZURE, GENERIC, MOONCAKE, VIDUR

    rng = np.random.default_rng(0)
    n = 500
    times = np.sort(rng.uniform(0, 1e5, n))
    # 1 to 17 significant digits, the simple reader's limit
    time_cells = [f"{t:.{int(d)}g}" if "e" not in f"{t:.{int(d)}g}" else f"{t:.1f}"
                  for t, d in zip(times, rng.integers(1, 18, n))]
    raw = np.array(time_cells, dtype=np.float64)
    time_cells = [time_cells[k] for k in np.argsort(raw, kind="stable")]
    lens = rng.integers(1, 10**6, (n, 2)).astype(str)
    stamps = np.datetime64("2023-11-16T18:15:46") + np.sort(rng.integers(0, 10**13, n)).astype("timedelta64[ns]")
    stamp_cells = [str(s).replace("T", " ")[:27 - int(d)] for s, d in zip(stamps, rng.integers(0, 7, n))]
    hashes = [" ".join(map(str, rng.integers(0, 10**6, rng.integers(1, 6)))) for _ in range(n)]
    files_ = {
        GENERIC: ("arrival_time,prompt_len,output_len,note", [f"{t},{p},{o},x y" for t, (p, o) in zip(time_cells, lens)]),
        VIDUR: ("arrived_at,num_prefill_tokens,num_decode_tokens", [f"{t},{p},{o}" for t, (p, o) in zip(time_cells, lens)]),
        MOONCAKE: ("timestamp_ms,input_length,output_length,hash_ids",
                   [f"{t},{p},{o},{h}" for t, (p, o), h in zip(time_cells, lens, hashes)]),
        AZURE: ("TIMESTAMP,ContextTokens,GeneratedTokens", [f"{s},{p},{o}" for s, (p, o) in zip(stamp_cells, lens)]),
    }
    for fmt, (header, rows) in files_.items():
        text = newline.join([header, *rows]) + newline
        path = tmp_path / f"{fmt.name}{suffix}"
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
        _assert_same_table(*_both_readers(path, fmt))
        assert len(load_csv(path)) == n


@pytest.mark.parametrize("text", [
    'arrival_time,prompt_len,output_len\n"0",1,1\n',  # quotes
    "arrival_time,prompt_len,output_len\n0, 1,1\n",  # a space pandas skips
    "arrival_time,prompt_len,output_len\n0,1,1\n\n\n",  # trailing blank lines
    "arrival_time,prompt_len,output_len\n0,1.0,1\n",  # a float length
    "\ufeffarrival_time,prompt_len,output_len\n0,1,1\n",  # a BOM
    "arrival_time,prompt_len,output_len\r0,1,1\r",  # old Mac line ends
    "arrival_time,prompt_len,output_len\n1e1,1,1\n",  # an exponent
])
def test_files_the_simple_reader_declines_still_load_through_pandas(tmp_path, text):
    from kvsched.traces.loaders import GENERIC, _simple_table
    from kvsched.traces.reading import read_simple_csv

    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    simple = read_simple_csv(path)
    assert simple is None or _simple_table(simple, GENERIC, "f") is None
    assert [(r.prompt_len, r.output_len) for r in load_csv(path)] == [(1, 1)]


@pytest.mark.parametrize("text", [
    "arrival_time,prompt_len,output_len\n0,0,1\n",  # length 0
    "arrival_time,prompt_len,output_len\n1,1,1\n0,1,1\n",  # time backwards
    "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-30 00:00:00.0,1,1\n",  # no such day
    "timestamp_ms,input_length,output_length,hash_ids\n0,1,1,\n1,1,1,5\n",  # pandas reads floats
])
def test_the_simple_reader_leaves_bad_values_to_the_pandas_path(tmp_path, text):
    from kvsched.traces.loaders import _simple_table, detect_format
    from kvsched.traces.reading import read_simple_csv

    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    simple = read_simple_csv(path)
    assert simple is not None and _simple_table(simple, detect_format(simple[0], "f"), "f") is None


def test_seventeen_digit_decimals_parse_like_pandas():
    import io

    import pandas as pd

    rng = np.random.default_rng(3)
    digits = rng.integers(1, 18, 20000)
    cells = []
    for d, point in zip(digits, rng.integers(0, 18, 20000)):
        s = "".join(rng.choice(list("0123456789"), int(d))).lstrip("0") or "0"
        k = min(int(point), len(s))
        cells.append(s if k == 0 else (s[:-k] or "0") + "." + s[-k:])
    slow = pd.read_csv(io.StringIO("x\n" + "\n".join(cells) + "\n"))["x"].to_numpy(np.float64)
    assert np.array_equal(np.array(cells).astype(np.float64), slow)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 50)), min_size=0, max_size=30), st.integers(0, 40))
def test_head_is_the_first_n_of_the_renumbered_trace(rows, n):
    # head copies only the kept requests; the same requests as renumbering the whole trace
    # (stable arrival order, ties in list order) and keeping its first n. Unsorted input with ties.
    from kvsched.request import Request
    from kvsched.traces.transforms import _renumbered

    reqs = [Request(100 + i, float(t), p, 1 + i, predicted_output_len=i + 1) for i, (t, p) in enumerate(rows)]
    fields = ("request_id", "arrival_time", "prompt_len", "output_len", "predicted_output_len")
    got = [tuple(getattr(r, f) for f in fields) for r in head(reqs, n)]
    assert got == [tuple(getattr(r, f) for f in fields) for r in _renumbered(_renumbered(reqs)[:n])]


def _fields(reqs) -> list[tuple]:
    import dataclasses

    return [tuple(getattr(r, f.name) for f in dataclasses.fields(r)) for r in reqs]


# Real arrivals; drawn arrivals; real arrivals with prefix ids (Mooncake's hash ids).
@pytest.mark.parametrize("trace", [t for t in SHIPPED_TRACES if t.name in ("azure-conv", "arxiv-summarization",
                                                                          "mooncake-conv")], ids=lambda t: t.name)
def test_the_first_n_of_a_load_are_its_head_after_the_same_draws(trace):
    # load_trace(first=N) builds only N requests (what --num-requests N runs): the whole load's head.
    rate = 5.0 if trace.name in LENGTH_ONLY else None
    rng = np.random.default_rng(4)
    whole = load_trace(trace.name, rng=rng, rate=rate)
    next_draw = rng.random()
    for n in (1, 7, trace.num_requests):
        rng = np.random.default_rng(4)
        assert _fields(load_trace(trace.name, rng=rng, rate=rate, first=n)) == _fields(head(whole, n)), n
        assert rng.random() == next_draw


def test_the_first_n_of_a_csv_file_and_a_synthetic_spec_are_their_head(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0.5,10,2\n1,20,3\n1,30,4\n3,5,1\n")
    for name in (str(path), "synthetic:n=20,rate=3,prompt=uniform(1,50),output=4"):
        whole = load_trace(name, rng=np.random.default_rng(1))
        for n in (0, 2, 3, 30):
            assert _fields(load_trace(name, rng=np.random.default_rng(1), first=n)) == _fields(head(whole, n))
    with pytest.raises(TraceError, match="head: n must be >= 0, got -1"):
        load_trace(str(path), first=-1)
