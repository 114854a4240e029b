"""Benchmark: NPZ → packed conversion, this checkout against today's method.

Makes a multi-GB synthetic padded NPZ in a temporary directory: a base of
``--base-molecules`` molecules from :func:`physpack.data.synthetic.write_padded_npz`
(pure Python per molecule, about 0.4 ms each), tiled member by member, streamed,
up to ``--size-gb`` (the converter's work does not depend on molecules being
distinct). Then runs, each in its own subprocess, ``--repeats`` times in turn:

* ``new``: ``python -m physpack.data.convert`` of this checkout (stored members
  read straight from the mapped file, output written and hashed in a background
  thread, input sha256 and CRC-32 in another);
* ``today``: the same command from physpack at ``--baseline-rev`` (the converter
  before that change: every member through ``zipfile``, then the input hashed in a
  second pass, everything on one thread), exported with ``git archive``;
* ``naive`` (``--naive``): ``np.load`` of every array fully into memory, then
  unpadding with a boolean mask and writing the same raw files;
* ``floor``: ``import physpack.data.convert`` alone (interpreter + numpy RSS).

Peak RSS of each comes from ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read
by a small wrapper process that has exactly that one child. Throughput is NPZ bytes
per second of wall time (best of the repeats; the median is printed too); CPU is
user + system seconds of all threads (the least of the repeats), the work done
whatever the load. The NPZ
is freshly written, so every run reads it from the page cache (this measures the
converter, not the disk). ``--profile`` also prints where the time goes in both
(cProfile of one in-process conversion, grouped: zip reading, sha256/CRC,
unpadding, dtype conversion, writing, checks). Temporary files are removed at the
end unless ``--keep``.

    python benchmarks/bench_convert.py [--size-gb 2] [--repeats 3] [--profile]

``--parallel 1,2`` measures sharded conversion instead: the same molecules as
``P`` shard NPZs of ``size/P`` each, converted by ``P`` concurrent ``physpack
convert`` processes (as Snakemake runs the ``convert_shard`` jobs), against
today's converter on the one NPZ, in turn: aggregate throughput and the peak RSS
of one job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` in a wrapper process; its wall time [s] and peak RSS [MB]."""
    wrapper = [sys.executable, __file__, "--_measure", "--", *cmd]
    proc = subprocess.run(wrapper, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure_child(cmd: list[str]) -> int:
    start = time.perf_counter()
    code = subprocess.run(cmd, check=False).returncode
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = usage.ru_maxrss  # KB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_MB": peak_kb * 1024 / 1e6,
            }
        )
    )
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


ROOT = Path(__file__).resolve().parents[1]
#: physpack before the faster conversion (one thread, everything through zipfile)
BASELINE_REV = "65e8cb3"

#: cProfile function names -> where the time goes
PHASES = {
    "zip reading": ("zipfile.py", "{method 'read' of '_io.BufferedReader'", "preadv"),
    "sha256 / CRC-32": ("_hashlib.HASH", "zlib.crc32"),
    "unpadding": ("'take' of 'numpy.ndarray'",),
    "dtype conversion": ("'astype' of", "'tobytes' of", "numpy.array"),
    "writing": ("'write' of '_io.BufferedWriter'", "posix.fsync"),
    "waiting for threads": ("'acquire' of '_thread.lock'",),
}

_PROFILE = """
import cProfile, io, pstats, sys
from pathlib import Path
from physpack.data.convert import convert_npz
prof = cProfile.Profile()
prof.enable()
convert_npz(Path(sys.argv[1]), Path(sys.argv[2]), chunk_mb=float(sys.argv[3]))
prof.disable()
out = io.StringIO()
pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats()
print(out.getvalue())
"""


def export_baseline(rev: str, dest: Path) -> Path:
    """physpack at ``rev`` (``git archive`` of this checkout) under ``dest``; the
    directory to put on PYTHONPATH."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "workflow/physpack"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "workflow"


def profile(npz: Path, out: Path, chunk_mb: float, env: dict[str, str]) -> dict:
    """Seconds per phase (:data:`PHASES`) of one in-process conversion (main
    thread; background threads show up as waiting)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROFILE, str(npz), str(out), str(chunk_mb)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    shutil.rmtree(out, ignore_errors=True)
    phases = dict.fromkeys([*PHASES, "total"], 0.0)
    for line in proc.stdout.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[1].replace(".", "").isdigit():
            continue
        if "function calls" in line:
            continue
        tottime = float(parts[1])
        for phase, needles in PHASES.items():
            if any(n in parts[5] for n in needles):
                phases[phase] += tottime
                break
        phases["total"] += tottime
    return phases


def measure_parallel(
    cmds: list[list[str]], env: dict[str, str] | None = None
) -> dict[str, float]:
    """Run ``cmds`` concurrently (each in its wrapper); wall time of all [s], the
    largest peak RSS of one [MB], CPU seconds of all."""
    wrapper = [sys.executable, __file__, "--_measure", "--"]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*wrapper, *c], stdout=subprocess.PIPE, text=True, env=env)
        for c in cmds
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a conversion failed: {outs}")
    got = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    return {
        "seconds": wall,
        "cpu_seconds": sum(g["cpu_seconds"] for g in got),
        "peak_rss_MB": max(g["peak_rss_MB"] for g in got),
    }


def run_parallel(
    size_gb: float,
    workdir: Path | None,
    chunk_mb: float,
    n_base: int,
    repeats: int,
    baseline_rev: str,
    jobs: list[int],
) -> None:
    """Sharded conversion with ``P`` concurrent jobs for each ``P`` of ``jobs``,
    beside today's converter on the single NPZ of the same molecules."""
    from physpack.data.synthetic import write_padded_npz

    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_par_", dir=workdir))
    try:
        reps = max(1, round(size_gb * 1e9 / BYTES_PER_MOLECULE / n_base))
        reps -= reps % int(np.lcm.reduce(jobs))  # equal shards for every P
        reps = max(reps, int(np.lcm.reduce(jobs)))
        write_padded_npz(tmp / "base.npz", n_base, seed=0, amax=29)
        whole = tiled_npz(tmp / "base.npz", tmp / "whole.npz", reps)
        shards = {
            P: [
                tiled_npz(tmp / "base.npz", tmp / f"p{P}_{k}.npz", reps // P)
                for k in range(P)
            ]
            for P in jobs
            if P > 1
        }
        shards[1] = [whole]
        npz_mb = whole.stat().st_size / 1e6
        print(f"synthetic NPZ: {reps * n_base} molecules, {npz_mb:.0f} MB")
        old_path = export_baseline(baseline_rev, tmp / "baseline")
        flags = ["--no-progress", "--chunk-mb", str(chunk_mb)]
        convert = [sys.executable, "-m", "physpack.data.convert"]
        results: dict[str, list[dict[str, float]]] = {"today": []}
        results |= {f"new x{P}": [] for P in jobs}
        today_env = {**os.environ, "PYTHONPATH": str(old_path)}
        for _ in range(repeats):
            out = tmp / "today_out"
            shutil.rmtree(out, ignore_errors=True)
            results["today"].append(
                measure([*convert, str(whole), str(out), *flags], today_env)
            )
            for P in jobs:
                outs = [tmp / f"new{P}_{k}" for k in range(P)]
                for o in outs:
                    shutil.rmtree(o, ignore_errors=True)
                cmds = [
                    [*convert, str(f), str(o), *flags] for f, o in zip(shards[P], outs)
                ]
                results[f"new x{P}"].append(measure_parallel(cmds))
        print(
            f"\n{'method':<48} {'best [s]':>9} {'MB/s':>7} {'vs today':>9} "
            f"{'CPU [s]':>8} {'RSS/job [MB]':>13}"
        )
        best_today = min(m["seconds"] for m in results["today"])
        for name, ms in results.items():
            best = min(m["seconds"] for m in ms)
            label = (
                f"today's convert ({baseline_rev}), one NPZ"
                if name == "today"
                else f"physpack convert, {name[5:]} shard job(s) at once"
            )
            print(
                f"{label:<48} {best:9.2f} {npz_mb / best:7.0f} "
                f"{best_today / best:8.2f}x {min(m['cpu_seconds'] for m in ms):8.2f} "
                f"{max(m['peak_rss_MB'] for m in ms):13.0f}"
            )
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
            f"best of {repeats}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    size_gb: float,
    workdir: Path | None,
    keep: bool,
    chunk_mb: float,
    n_base: int,
    repeats: int,
    baseline_rev: str,
    naive: bool,
    with_profile: bool,
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
        old_path = export_baseline(baseline_rev, tmp / "baseline")
        envs = {
            "new": dict(os.environ),
            "today": {**os.environ, "PYTHONPATH": str(old_path)},
        }
        convert = [sys.executable, "-m", "physpack.data.convert", str(npz)]
        flags = ["--no-progress", "--chunk-mb", str(chunk_mb)]
        floor = measure([sys.executable, "-c", "import physpack.data.convert"])
        runs: dict[str, list[dict[str, float]]] = {"new": [], "today": []}
        for _ in range(repeats):  # in turn, so that both see the same load
            for name, done in runs.items():
                out = tmp / f"packed_{name}"
                shutil.rmtree(out, ignore_errors=True)
                done.append(measure([*convert, str(out), *flags], envs[name]))
        if naive:
            runs["naive"] = [
                measure(
                    [sys.executable, __file__, "--_naive", str(npz), str(tmp / "naive")]
                )
            ]
        names = ("Z_pack.int32", "R_pack.f32", "F_pack.f32", "E.f64", "D.f64")
        same = all(
            _sha(tmp / "packed_new" / n) == _sha(tmp / "packed_today" / n)
            for n in names
        )
        packed_mb = _dir_bytes(tmp / "packed_new") / 1e6
        labels = {
            "new": "physpack convert (this checkout)",
            "today": f"physpack convert at {baseline_rev} (today)",
            "naive": "naive np.load",
        }
        print(
            f"\n{'method':<42} {'best [s]':>9} {'median':>7} {'MB/s':>7} "
            f"{'CPU [s]':>8} {'peak RSS [MB]':>14}"
        )
        best = {}
        for name, ms in runs.items():
            secs = sorted(m["seconds"] for m in ms)
            best[name] = secs[0]
            cpu = min(m["cpu_seconds"] for m in ms)
            print(
                f"{labels[name]:<42} {secs[0]:9.2f} {secs[len(secs) // 2]:7.2f} "
                f"{npz_mb / secs[0]:7.0f} {cpu:8.2f} "
                f"{max(m['peak_rss_MB'] for m in ms):14.0f}"
            )
        print(
            f"{'interpreter floor (import)':<42} {'':>25} "
            f"{floor['cpu_seconds']:8.2f} {floor['peak_rss_MB']:14.0f}"
        )
        print(
            f"\nthroughput new/today: {best['today'] / best['new']:.2f}x (best of "
            f"{repeats}); identical packed arrays: {same}"
        )
        print(
            f"bytes: padded NPZ {npz_mb:.0f} MB -> packed {packed_mb:.0f} MB "
            f"({100 * (1 - packed_mb / npz_mb):.0f} % saved); chunk {chunk_mb} MB; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        if with_profile:
            print(
                f"\nwhere the time goes (main thread, seconds) {'today':>8} {'new':>8}"
            )
            prof = {
                name: profile(npz, tmp / f"prof_{name}", chunk_mb, envs[name])
                for name in ("today", "new")
            }
            for phase in prof["today"]:
                print(
                    f"  {phase:<40} {prof['today'][phase]:8.2f} "
                    f"{prof['new'][phase]:8.2f}"
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
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method")
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision of today's method"
    )
    parser.add_argument("--naive", action="store_true", help="also the np.load way")
    parser.add_argument("--profile", action="store_true", help="time per phase")
    parser.add_argument(
        "--parallel",
        default=None,
        help="comma-separated job counts: sharded conversion with that many "
        "concurrent shard jobs (e.g. 1,2)",
    )
    args = parser.parse_args()
    if args.parallel:
        run_parallel(
            args.size_gb,
            args.workdir,
            args.chunk_mb,
            args.base_molecules,
            args.repeats,
            args.baseline_rev,
            [int(p) for p in args.parallel.split(",")],
        )
        return 0
    run(
        args.size_gb,
        args.workdir,
        args.keep,
        args.chunk_mb,
        args.base_molecules,
        args.repeats,
        args.baseline_rev,
        args.naive,
        args.profile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
