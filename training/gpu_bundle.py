"""What travels to a borrowed GPU machine and back: the data in, the trained checkpoints out.

In: CIFAR-10 as one xz-compressed pack (15 MiB) and MNIST as torchvision's gzipped idx files
(11 MiB), so code, data and the wheels of the few packages the machine lacks stay well under
the 64 MiB such a machine takes. Out: the run's checkpoints, curves and logs as one tar file,
split losslessly into parts of at most 15 MiB (the machine returns files of at most 16 MiB),
with a SHA256SUMS file that `sha256sum -c` reads; `join_results` checks and reassembles them.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from models.checkpoint import sha256_file
from training.pack import write_pack

PACK_NAME = "cifar10-train.pack.xz"
MNIST_FILES = {  # idx file -> bytes of its header (magic and sizes) before the rows
    "train-images-idx3-ubyte": 16,
    "train-labels-idx1-ubyte": 8,
    "t10k-images-idx3-ubyte": 16,
    "t10k-labels-idx1-ubyte": 8,
}
RESULT_TAR = "gpu-run.tar"
SUMS_FILE = "SHA256SUMS"
PART_BYTES = 15 * 2**20
# What the GPU image lacks among the packages `training` imports (models.checkpoint's cards)
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
# The GPU machine's interpreter (CPython 3.12, x86-64, glibc): pip's names for its wheels
WHEEL_TARGET = ["--python-version", "3.12", "--implementation", "cp"] + [
    arg
    for tag in (
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    )
    for arg in ("--platform", tag)
]


class BundleError(Exception):
    """Inputs or results that are missing or do not match their checksums."""


# --- in -------------------------------------------------------------------------------------


def _mnist_idx(raw: Path, name: str) -> bytes:
    """One MNIST idx file's bytes, from `name` or `name.gz` under `raw`."""
    if (raw / name).is_file():
        return (raw / name).read_bytes()
    if (raw / f"{name}.gz").is_file():
        return gzip.decompress((raw / f"{name}.gz").read_bytes())
    raise BundleError(f"MNIST file {name}(.gz) not found under {raw}")


def _first_rows(idx: bytes, header: int, n: int) -> bytes:
    """The idx file cut to its first `n` rows (the count in the header rewritten to match)."""
    total = int.from_bytes(idx[4:8], "big")
    n = min(n, total)
    row = (len(idx) - header) // total
    return idx[:4] + n.to_bytes(4, "big") + idx[8:header] + idx[header : header + n * row]


def prepare_inputs(data_dir: Path, out: Path, limit: int | None = None) -> dict[str, int]:
    """Write `out`/cifar10-train.pack.xz and `out`/MNIST/raw/*.gz from a datasets folder
    (`data_dir`/cifar10/train, `data_dir`/MNIST/raw); returns each file's size in bytes.

    `limit`: a dry run's data, the first `limit` CIFAR-10 images of each class and the first
    `limit` MNIST images of each split.
    """
    tree, raw = data_dir / "cifar10" / "train", data_dir / "MNIST" / "raw"
    if not tree.is_dir():
        raise BundleError(f"no CIFAR-10 ImageFolder tree at {tree}")
    out.mkdir(parents=True, exist_ok=True)
    write_pack(tree, out / PACK_NAME, per_class=limit)
    (out / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for name, header in MNIST_FILES.items():
        idx = _mnist_idx(raw, name)
        if limit is not None:
            idx = _first_rows(idx, header, limit)
        with gzip.GzipFile(out / "MNIST" / "raw" / f"{name}.gz", "wb", mtime=0) as f:
            f.write(idx)
    return {
        str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
    }


def download_wheels(dest: Path) -> list[Path]:
    """pip-download, for the GPU machine's Python, the wheels of `WHEELS` at the versions
    installed here (the ones the tests ran with)."""
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*cmd, *WHEEL_TARGET, "--dest", str(dest), *pins], check=True)
    return sorted(dest.glob("*.whl"))


def unpack_inputs(bundle: Path, work: Path) -> tuple[Path, Path]:
    """The pack file and an MNIST root torchvision reads (its idx files unzipped into `work`)."""
    pack = bundle / PACK_NAME
    if not pack.is_file():
        raise BundleError(f"{pack} not found (python -m training.gpu_run prepare writes it)")
    raw = work / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(_mnist_idx(bundle / "MNIST" / "raw", name))
    return pack, work / "mnist"


# --- out ------------------------------------------------------------------------------------


def pack_results(
    root: Path, members: list[Path], out: Path, part_bytes: int = PART_BYTES
) -> list[Path]:
    """Tar `members` (paths under `root`) into `out`, split into parts of at most `part_bytes`
    (gpu-run.tar.000, .001, ...), and write SHA256SUMS for the parts and the whole tar.

    The whole tar is written beside the members, not in `out`: a run stopped while splitting
    leaves no file there too large to come back."""
    out.mkdir(parents=True, exist_ok=True)
    whole = root / RESULT_TAR
    with tarfile.open(whole, "w") as tar:
        for m in members:
            tar.add(m, arcname=str(m.relative_to(root)))
    parts, digest = [], sha256_file(whole)
    with whole.open("rb") as f:
        for i, block in enumerate(iter(lambda: f.read(part_bytes), b"")):
            part = out / f"{RESULT_TAR}.{i:03d}"
            part.write_bytes(block)
            parts.append(part)
    whole.unlink()
    lines = [f"{sha256_file(p)}  {p.name}" for p in parts] + [f"{digest}  {RESULT_TAR}"]
    (out / SUMS_FILE).write_text("\n".join(lines) + "\n")
    return parts


def join_results(src: Path, dest: Path) -> list[str]:
    """Check the parts in `src` against SHA256SUMS, join them, check the whole tar, and unpack
    it into `dest`; returns the names it holds. The shell's way to the same:
    `cat gpu-run.tar.??? > gpu-run.tar && sha256sum -c SHA256SUMS && tar -xf gpu-run.tar`."""
    sums_file = src / SUMS_FILE
    if not sums_file.is_file():
        raise BundleError(f"no {SUMS_FILE} in {src}")
    sums = {}
    for line in sums_file.read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    parts = sorted(name for name in sums if name.startswith(f"{RESULT_TAR}."))
    if not parts or RESULT_TAR not in sums:
        raise BundleError(f"{sums_file} lists no parts of {RESULT_TAR}")
    dest.mkdir(parents=True, exist_ok=True)
    whole = dest / RESULT_TAR
    with whole.open("wb") as f:
        for name in parts:
            part = src / name
            if not part.is_file() or sha256_file(part) != sums[name]:
                raise BundleError(f"{part} is missing or does not match {SUMS_FILE}")
            with part.open("rb") as p:
                shutil.copyfileobj(p, f)
    if sha256_file(whole) != sums[RESULT_TAR]:
        raise BundleError(f"the joined {whole} does not match {SUMS_FILE}")
    with tarfile.open(whole) as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")  # no absolute paths, links out or device files
    whole.unlink()
    return names
