"""Broken trace files give one TraceError line naming the file (and line, column), never a traceback."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.cli import main
from kvsched.traces import TraceError, load_csv

GOOD = "arrival_time,prompt_len,output_len\n" + "".join(f"{i},{10 + i},{5 + i}\n" for i in range(40))
GOOD_GZ = gzip.compress(GOOD.encode(), mtime=0)


def _error(path) -> str:
    with pytest.raises(TraceError) as info:
        load_csv(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(GOOD_GZ[: len(GOOD_GZ) // 2])
    assert "corrupt or truncated" in _error(path)


def test_not_a_gzip_file_names_the_file(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(b"arrival_time,prompt_len,output_len\n0,1,1\n")
    assert "gzip" in _error(path)


def test_corrupt_gzip_body_names_the_file(tmp_path):
    path = tmp_path / "t.csv.gz"
    data = bytearray(GOOD_GZ)
    data[15:25] = b"\xff" * 10
    path.write_bytes(bytes(data))
    _error(path)


def test_latin1_header_names_file_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("arrival_time,prompt_len,output_len,café\n0,1,1,x\n".encode("latin-1"))
    message = _error(path)
    assert "line 1, column 39" in message and "0xe9" in message and "UTF-8" in message


def test_latin1_cell_names_line_and_column(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(("arrival_time,prompt_len,output_len,note\n0,1,1,ok\n1,2,2,é\n" * 1)
                                   .encode("latin-1")))
    assert "line 3, column 7" in _error(path)


def test_gzip_named_csv_says_so(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(GOOD_GZ)
    message = _error(path)
    assert "line 1, column 2" in message and ".gz" in message


def test_huge_length_is_not_wrapped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,5,6\n1,99999999999999999999999,6\n")
    message = _error(path)
    assert "line 3" in message and "'prompt_len'" in message and "99999999999999999999999" in message
    assert "-9223372036854775808" not in message


def test_uint64_length_is_not_wrapped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,18446744073709551615,6\n")
    message = _error(path)
    assert "at most" in message and "18446744073709551615" in message


def test_duplicate_column_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len,prompt_len\n0,5,6,7\n")
    message = _error(path)
    assert "line 1" in message and "'prompt_len'" in message and "columns 2 and 4" in message


@pytest.mark.parametrize("column, text", [("prompt_len", "0,True,6\n1,False,6\n"),
                                          ("arrival_time", "True,5,6\n"),
                                          ("output_len", "0,5,true\n")])
def test_booleans_are_not_numbers(tmp_path, column, text):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n" + text)
    message = _error(path)
    assert f"line 2 (header is line 1), column {column!r}" in message and "not a number" in message


def test_too_many_fields_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,5,6\n1,5,6\n2,5,6,7\n")
    assert "line 4" in _error(path)


def test_cli_prints_one_line_without_traceback(tmp_path, capsys):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(GOOD_GZ[:30])
    assert main(["trace-stats", "--trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and str(path) in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_gzip_trace_never_raises_anything_else(tmp_path, data):
    """Truncate, overwrite or append bytes anywhere: a load either works or gives one TraceError line."""
    raw = bytearray(GOOD_GZ)
    cut = data.draw(st.integers(0, len(raw)))
    start = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.binary(max_size=12))
    raw[start:start + len(junk)] = junk
    path = tmp_path / "d.csv.gz"
    path.write_bytes(bytes(raw[:cut]) + data.draw(st.binary(max_size=4)))
    try:
        load_csv(path)
    except TraceError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), header=st.booleans())
def test_byte_garbage_never_raises_anything_else(tmp_path, body, header):
    path = tmp_path / "g.csv"
    path.write_bytes((b"arrival_time,prompt_len,output_len\n" if header else b"") + body)
    try:
        load_csv(path)
    except TraceError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
