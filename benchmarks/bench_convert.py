"""Benchmark: streaming NPZ → packed conversion against the naive load-everything way.

Makes a multi-GB synthetic padded NPZ in a temporary directory: a base of
``--base-molecules`` molecules from :func:`physpack.data.synthetic.write_padded_npz`
(pure Python per molecule, about 0.4 ms each), tiled member by member, streamed,
up to ``--size-gb`` (the converter's work does not depend on molecules being
distinct). Then runs, each in its own subprocess:

* ``streaming``: ``python -m physpack.data.convert`` (chunked reads from the zip,
  validation, unit conversion, sha256 of the input, atomic write);
* ``naive``: the baseline, ``np.load`` of every array fully into memory, then
  unpadding with a boolean mask and writing the same raw files;
* ``floor``: ``import physpack.data.convert`` alone (interpreter + numpy baseline RSS).

Peak RSS of each comes from ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read
by a small wrapper process that has exactly that one child. Throughput is NPZ bytes
per second of wall time. The NPZ is freshly written, so both runs read it from the
page cache (this measures the converter, not the disk). Temporary files are removed
at the end unless ``--keep``.

    python benchmarks/bench_convert.py [--size-gb 2] [--workdir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

#: padded bytes per molecule of write_padded_npz at width 29: R, F, Z + E, Q, N, D
BYTES_PER_MOLECULE = 29 * (12 + 12 + 4) + 8 + 8 + 4 + 24


def measure(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` in a wrapper process; its wall time [s] and peak RSS [MB]."""
    wrapper = [sys.executable, __file__, "--_measure", "--", *cmd]
    proc = subprocess.run(wrapper, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure_child(cmd: list[str]) -> int:
    start = time.perf_counter()
    code = subprocess.run(cmd, check=False).returncode
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_MB": peak_kb * 1024 / 1e6}))
    return code


def tiled_npz(base: Path, out: Path, reps: int) -> Path:
    """Write ``base``'s members ``reps`` times along the first axis into the stored
    NPZ ``out``, streaming (one base member in memory at a time)."""
    with np.load(base) as src, zipfile.ZipFile(out, "w", allowZip64=True) as zf:
        for key in src.files:
            arr = np.ascontiguousarray(src[key])
            header = {
                "descr": arr.dtype.str,
                "fortran_order": False,
                "shape": (arr.shape[0] * reps, *arr.shape[1:]),
            }
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                npformat.write_array_header_2_0(fh, header)
                for _ in range(reps):
                    fh.write(arr.tobytes())
    return out


def naive_convert(npz: Path, out: Path) -> None:
    """The baseline: every array loaded whole, unpadded by a mask, written raw."""
    out.mkdir(parents=True)
    with np.load(npz) as f:
        a = {k: f[k] for k in f.files}  # decompresses/reads every member fully
    n = a["N"].astype(np.int64)
    real = np.arange(a["Z"].shape[1]) < n[:, None]
    np.save(out / "offsets.npy", np.concatenate([[0], np.cumsum(n)]).astype(np.int64))
    np.save(out / "n_atoms.npy", n.astype(np.int32))
    a["Z"][real].astype("<i4").tofile(out / "Z_pack.int32")
    a["R"][real].astype("<f4").tofile(out / "R_pack.f32")
    a["F"][real].astype("<f4").tofile(out / "F_pack.f32")
    a["E"].astype("<f8").tofile(out / "E.f64")
    a["Q"].astype("<f8").tofile(out / "Qtot.f64")
    a["D"].astype("<f8").tofile(out / "D.f64")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def run(
    size_gb: float, workdir: Path | None, keep: bool, chunk_mb: float, n_base: int
) -> None:
    from physpack.data.synthetic import write_padded_npz

    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=workdir))
    try:
        reps = max(1, round(size_gb * 1e9 / BYTES_PER_MOLECULE / n_base))
        n_mol = reps * n_base
        npz = tmp / "padded.npz"
        t0 = time.perf_counter()
        write_padded_npz(tmp / "base.npz", n_base, seed=0, amax=29)
        tiled_npz(tmp / "base.npz", npz, reps)
        (tmp / "base.npz").unlink()
        make_s = time.perf_counter() - t0
        npz_mb = npz.stat().st_size / 1e6
        print(
            f"synthetic NPZ: {n_mol} molecules, {npz_mb:.0f} MB "
            f"(made in {make_s:.0f} s)"
        )

        floor = measure([sys.executable, "-c", "import physpack.data.convert"])
        streaming = measure(
            [
                sys.executable,
                "-m",
                "physpack.data.convert",
                str(npz),
                str(tmp / "packed"),
                "--no-progress",
                "--chunk-mb",
                str(chunk_mb),
            ]
        )
        naive = measure(
            [sys.executable, __file__, "--_naive", str(npz), str(tmp / "naive")]
        )
        same = all(
            _sha(tmp / "packed" / name) == _sha(tmp / "naive" / name)
            for name in ("Z_pack.int32", "R_pack.f32", "F_pack.f32", "E.f64", "D.f64")
        )
        packed_mb = _dir_bytes(tmp / "packed") / 1e6
        rows = [("streaming (physpack convert)", streaming), ("naive np.load", naive)]
        print(f"\n{'method':<30} {'time [s]':>9} {'MB/s':>8} {'peak RSS [MB]':>14}")
        for name, m in rows:
            print(
                f"{name:<30} {m['seconds']:9.1f} {npz_mb / m['seconds']:8.0f} "
                f"{m['peak_rss_MB']:14.0f}"
            )
        print(
            f"{'interpreter floor (import)':<30} {'':>9} {'':>8} "
            f"{floor['peak_rss_MB']:14.0f}"
        )
        print(
            f"\npeak RSS ratio naive/streaming: "
            f"{naive['peak_rss_MB'] / streaming['peak_rss_MB']:.1f}x; "
            f"throughput ratio streaming/naive: "
            f"{naive['seconds'] / streaming['seconds']:.2f}x"
        )
        print(
            f"bytes: padded NPZ {npz_mb:.0f} MB -> packed {packed_mb:.0f} MB "
            f"({100 * (1 - packed_mb / npz_mb):.0f} % saved); "
            f"identical packed arrays: {same}; chunk {chunk_mb} MB"
        )
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        return _measure_child(sys.argv[3:])
    if len(sys.argv) > 1 and sys.argv[1] == "--_naive":
        naive_convert(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="NPZ size [GB]")
    parser.add_argument("--workdir", type=Path, default=None, help="temp dir parent")
    parser.add_argument("--keep", action="store_true", help="keep the temp files")
    parser.add_argument("--chunk-mb", type=float, default=32.0, help="convert chunk")
    parser.add_argument(
        "--base-molecules", type=int, default=50_000, help="distinct molecules"
    )
    args = parser.parse_args()
    run(args.size_gb, args.workdir, args.keep, args.chunk_mb, args.base_molecules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
