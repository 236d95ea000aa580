"""The one place a trace file is read: every reading, decompression, decoding and
CSV-parsing failure becomes one `TraceError` line naming the file, and the line and
column where there is one. Nothing else in kvsched calls `pd.read_csv` on a trace.

`read_simple_csv` reads the common case without pandas (whose import alone costs ~0.2 s
of `kvsched simulate`'s start-up): a plain or gzip UTF-8 file, no quotes, every row with
as many fields as the header. It gives up (None) on anything else, and the caller then
reads the file through `read_csv` (pandas), which reports every problem as before.

The fast path is pandas' C parser on the path itself; only when it fails is the file read
again, byte by byte, to say where (decoding errors are located by streaming the file, so a
large trace is never held in memory twice).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import re
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from kvsched.traces.validate import TraceError

if TYPE_CHECKING:
    import pandas as pd

_DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst", ".tar")
_ARCHIVE_ERRORS = (EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


class TooManyFields(Exception):
    """pandas' notice that a data row has more fields than the header (raised as a warning)."""


def read_simple_csv(path: str | Path) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows of text cells) of a simple CSV, or None where pandas must read it.

    Simple: a plain or .gz file of strict UTF-8 without a BOM, quotes or NUL bytes, lines
    ending in \n or \r\n, no blank lines, a header of distinct non-empty names without
    surrounding whitespace, and exactly as many fields in every row as in the header.
    Cells are left as text; what they may hold is checked by the caller.
    """
    suffix = Path(path).suffix.lower()
    if (suffix in _COMPRESSED and suffix != ".gz") or str(path).lower().endswith(".tar.gz"):
        return None
    try:
        with (gzip.open if suffix == ".gz" else open)(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError, *_ARCHIVE_ERRORS):
        return None
    if text.startswith("\ufeff") or '"' in text or "\x00" in text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) < 2 or "" in lines:
        return None
    header = lines[0].split(",")
    if len(set(header)) != len(header) or any(not h or h != h.strip() for h in header):
        return None
    rows = [line.split(",") for line in lines[1:]]
    width = len(header)
    if set(map(len, rows)) != {width}:
        return None
    return header, rows


def read_csv(path: str | Path, source: str, **kwargs) -> pd.DataFrame:
    """`pd.read_csv(path, **kwargs)`, every failure of the file itself a one-line TraceError."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise  # the caller knows what an empty file means for it
    except pd.errors.ParserWarning:  # pandas' notice that the first data row is too long
        raise TraceError(f"{source}: line 2 (header is line 1) has more fields than the header") from None
    except UnicodeDecodeError as err:
        raise TraceError(_decode_message(path, source, err)) from None
    except pd.errors.ParserError as err:
        raise TraceError(_parser_message(source, err)) from None
    except (OSError, *_ARCHIVE_ERRORS) as err:
        raise TraceError(_io_message(path, source, err)) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _io_message(path: str | Path, source: str, err: BaseException) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in _COMPRESSED and not isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"{source}: cannot decompress (corrupt or truncated {suffix} file): {_one_line(err)}"
    return f"{source}: cannot read the file: {_one_line(err)}"


def _parser_message(source: str, err: Exception) -> str:
    text = _one_line(err)
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if fields:
        want, line, got = fields.groups()
        return f"{source}: line {line} (header is line 1) has {got} fields, the header {want}"
    return f"{source}: malformed CSV (lines counted with the header as line 1): {text}"


def _decode_message(path: str | Path, source: str, err: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 sits: line and column (1-based, in characters)."""
    where = _locate_bad_byte(path)
    if where is None:  # a compression the locator does not open; pandas' own position then
        return f"{source}: not UTF-8 text: {_one_line(err)}; save it as UTF-8"
    line, column, byte, first = where
    hint = "; save it as UTF-8"
    if line == 1 and first.startswith(_GZIP_MAGIC) and Path(path).suffix.lower() not in _COMPRESSED:
        hint = "; it looks like gzip data: name the file *.csv.gz"
    return f"{source}: line {line}, column {column}: byte 0x{byte:02x} is not UTF-8 text{hint}"


def _locate_bad_byte(path: str | Path) -> tuple[int, int, int, bytes] | None:
    """(line, column, bad byte, the file's first bytes) of the first invalid UTF-8 sequence."""
    suffix = Path(path).suffix.lower()
    opener = _DECOMPRESSORS.get(suffix, None if suffix in _COMPRESSED else open)
    if opener is None:
        return None
    line, line_bytes, first = 1, b"", b""  # line_bytes: the raw bytes read since the last newline
    decoder = codecs.getincrementaldecoder("utf-8")()

    def found(chunk: bytes, bad: UnicodeDecodeError) -> tuple[int, int, int, bytes]:
        # bad.object is the decoder's carried-over partial sequence followed by `chunk`.
        buffer = line_bytes + chunk
        at = len(line_bytes) + len(chunk) - len(bad.object) + bad.start
        head = buffer[:at]
        text = head[head.rfind(b"\n") + 1:].decode("utf-8", errors="replace")
        return line + head.count(b"\n"), len(text) + 1, buffer[at], first

    try:
        with opener(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                first = first or chunk[:4]
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as bad:
                    return found(chunk, bad)
                line += chunk.count(b"\n")
                line_bytes = line_bytes + chunk if b"\n" not in chunk else chunk[chunk.rfind(b"\n") + 1:]
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as bad:  # the file ends inside a multi-byte sequence
                return found(b"", bad)
    except (OSError, *_ARCHIVE_ERRORS):
        return None
    return None
