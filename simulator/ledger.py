"""Per-request records of the requests in flight, and where settled ones go.

The simulator writes request `rid`'s record at `rid & mask` of a
`RecordWindow`: a ring of RequestRecords columns holding only the requests
between the oldest unsettled one and the newest arrival. When a prefix of
that range is settled (completed, rejected or failed) it is retired: copied
out once for the summary `Tally`, for a `ColumnWriter` streaming it to disk,
and its slots reset for reuse. The ring doubles when the requests in flight
outgrow it, so memory follows the requests in flight, not the run's length.

Runs that keep every record in memory (the Python API's default) use one
window as large as the run with mask -1 (rid & -1 == rid) and nothing
retired; the same code paths serve both.

On disk each column is one .npy file written front to back (its header
states the run's request count up front), so `np.load(..., mmap_mode="r")`
reads any of them without loading the rest; `pack_npz` bundles them into the
`requests.npz` that `infersched simulate --out` has always written.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from simulator.metrics import RECORD_COLUMNS, RequestRecords

PENDING = 0  # RequestStatus.PENDING
# Rows per block read back from disk by `record_chunks`: ~28 MB of all columns.
READ_ROWS = 1 << 18


class RecordWindow:
    """RequestRecords for rids [lo, hi) at `rid & mask` (see the module docstring)."""

    def __init__(self, n_requests: int, capacity: int | None):
        if capacity is None or capacity >= n_requests:
            self.records = RequestRecords(n_requests)
            self.mask = -1
        else:
            size = 1 << max(int(capacity) - 1, 1).bit_length()
            self.records = RequestRecords(size)
            self.mask = size - 1
        self.lo = 0  # the oldest request not retired
        self.hi = 0  # one past the newest request admitted

    @property
    def bounded(self) -> bool:
        return self.mask != -1

    def index(self, lo: int, hi: int) -> np.ndarray | slice:
        if not self.bounded:
            return slice(lo, hi)
        return np.arange(lo, hi, dtype=np.int64) & self.mask

    def admit(self, hi: int) -> bool:
        """Make room for requests up to `hi`; True when the ring grew (the mask changed)."""
        grew = False
        if self.bounded and hi - self.lo > self.mask + 1:
            size = 1 << (hi - self.lo - 1).bit_length()
            old, old_index = self.records, self.index(self.lo, self.hi)
            self.records = RequestRecords(size)
            self.mask = size - 1
            new_index = self.index(self.lo, self.hi)
            for name in RECORD_COLUMNS:
                getattr(self.records, name)[new_index] = getattr(old, name)[old_index]
            grew = True
        self.hi = max(self.hi, hi)
        return grew

    def settled_until(self, limit: int) -> int:
        """One past the last request of the settled run starting at `lo`, at most `limit`."""
        if limit <= self.lo:
            return self.lo
        pending = self.records.status[self.index(self.lo, limit)] == PENDING
        return self.lo + (int(pending.argmax()) if pending.any() else len(pending))

    def retire(self, hi: int) -> dict[str, np.ndarray]:
        """Copies of the records of requests [lo, hi), whose slots are reset for reuse."""
        index = self.index(self.lo, hi)
        cols = {}
        for name, (_, fill) in RECORD_COLUMNS.items():
            col = getattr(self.records, name)
            cols[name] = col[index]
            col[index] = fill
        self.lo = hi
        return cols


class ColumnWriter:
    """Streams record columns, block by block in request order, to one .npy file per column."""

    def __init__(self, directory: Path, n_requests: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n_requests = n_requests
        self.rows = 0
        self._files = {}
        for name, (dtype, _) in RECORD_COLUMNS.items():
            f = open(self.directory / f"{name}.npy", "wb")
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (n_requests,)}
            np.lib.format.write_array_header_2_0(f, header)
            self._files[name] = f

    def write(self, cols: dict[str, np.ndarray]) -> None:
        for name, f in self._files.items():
            f.write(np.ascontiguousarray(cols[name], dtype=RECORD_COLUMNS[name][0]).tobytes())
        self.rows += len(cols["status"])

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        if self.rows != self.n_requests:
            raise RuntimeError(f"{self.directory}: wrote {self.rows:,} request records, expected {self.n_requests:,}")


def record_chunks(result, names=tuple(RECORD_COLUMNS), rows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The run's per-request records (columns `names`) in blocks: from memory, or read back from
    its column files. Read with plain reads, not a memory map: mapped pages once touched count
    in the process's resident memory for as long as the map lives."""
    if result.records is not None:
        yield {name: getattr(result.records, name) for name in names}
        return
    directory = getattr(result, "record_dir", None)
    if directory is None:
        raise ValueError("this run kept no per-request records (run with keep_records or a record_dir)")
    rows = rows or READ_ROWS
    files, offsets, dtypes = {}, {}, {}
    try:
        for name in names:
            f = files[name] = open(Path(directory) / f"{name}.npy", "rb")
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offsets[name], dtypes[name], n = f.tell(), dtype, shape[0]
        for lo in range(0, n, rows):
            block = {}
            for name, f in files.items():
                f.seek(offsets[name] + lo * dtypes[name].itemsize)
                block[name] = np.fromfile(f, dtype=dtypes[name], count=min(rows, n - lo))
            yield block
    finally:
        for f in files.values():
            f.close()


def pack_npz(directory: Path, path: Path, instance_pool_names: list[str]) -> None:
    """Bundle a ColumnWriter's files into `path` (what np.savez_compressed writes), then remove them."""
    directory = Path(directory)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name in RECORD_COLUMNS:
            zf.write(directory / f"{name}.npy", arcname=f"{name}.npy")
        with zf.open("instance_pool.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.array(instance_pool_names))
    shutil.rmtree(directory)
