"""Fashion-MNIST: an IDX reader, a data-set locator and the train/val/test split.

The data set is looked for, in this order, in

1. the directory the user names (``--data-dir``),
2. the directory in the environment variable ``WEIGHTDECAY_DATA``,
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``),
4. torchvision's ``<root>/FashionMNIST/raw`` under a few usual roots,

and when none holds it, the class-balanced subset shipped inside this package
(10,000 training and 2,000 test images, see ``data/NOTICE``) is used. A
directory the user named that lacks the files is an error: it never falls
back silently.

Everything lives in memory as tensors; batches are drawn by indexing with a
seeded permutation per epoch.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ENV_VAR",
    "DataError",
    "DataSource",
    "Split",
    "find_data",
    "load_data",
    "make_split",
    "read_idx",
]

logger = logging.getLogger(__name__)

ENV_VAR = "WEIGHTDECAY_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_DIR = Path(__file__).resolve().parent / "data"
TORCHVISION_ROOTS = (
    Path("data"),
    Path("~/data"),
    Path("~/.torchvision"),
    Path("~/.cache/torchvision"),
    Path("/usr/share/datasets"),
)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(RuntimeError):
    """A data file is missing, truncated or not what its name says."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the four IDX files were found.

    Attributes:
        source: ``"embedded"`` or ``"fashion-mnist"`` (the full data set).
        origin: how the directory was chosen (``"--data-dir"``, ``ENV_VAR``,
            ``"system"``, ``"torchvision"``, ``"embedded"``).
        directory: the directory holding the files.
        files: the path of each file, keyed as in ``FILES``.
    """

    source: str
    origin: str
    directory: Path
    files: dict[str, Path]


def read_idx(path: Path | str, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by their first bytes).

    Args:
        path: the file.
        expected_magic: ``0x00000803`` for images, ``0x00000801`` for labels;
            ``None`` accepts any unsigned-byte IDX file.

    Returns:
        A ``uint8`` array of the shape the header declares.

    Raises:
        DataError: the file is missing, not IDX, has another magic number, or
            holds fewer or more bytes than its header declares.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError) as err:
            raise DataError(f"{path}: corrupt or truncated gzip data ({err})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {magic:#010x})")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path}: magic number {magic:#010x}, expected {expected_magic:#010x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {kind}: {len(raw)} bytes, header {dims} needs {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _files_in(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` (``.gz`` preferred), or None if any lacks."""
    found = {}
    for key, stem in FILES.items():
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def find_data(
    data_dir: Path | str | None = None,
    *,
    environ: dict[str, str] | None = None,
    system_dir: Path = SYSTEM_DIR,
    torchvision_roots: Sequence[Path] = TORCHVISION_ROOTS,
    embedded_dir: Path = EMBEDDED_DIR,
) -> DataSource:
    """Locate Fashion-MNIST in the order given in the module docstring.

    Args:
        data_dir: a directory the user named; it must hold the files.
        environ: the environment to read ``WEIGHTDECAY_DATA`` from
            (``os.environ`` by default).
        system_dir: the system-wide location.
        torchvision_roots: roots under which ``FashionMNIST/raw`` is tried.
        embedded_dir: the subset shipped with the package.

    A named directory that is the embedded subset's is reported as
    ``"embedded"``; any other as ``"fashion-mnist"``.

    Raises:
        DataError: a named directory (argument or environment) lacks a file,
            or the embedded subset is missing.
    """
    environ = os.environ if environ is None else environ
    named = [("--data-dir", data_dir), (ENV_VAR, environ.get(ENV_VAR) or None)]
    for origin, value in named:
        if value is None:
            continue
        directory = Path(value).expanduser()
        files = _files_in(directory)
        if files is None:
            missing = [s for s in FILES.values() if not _present(directory, s)]
            raise DataError(
                f"{origin}={value!s}: no Fashion-MNIST there (missing "
                f"{', '.join(missing)}[.gz]); not falling back to another source"
            )
        is_embedded = directory.resolve() == Path(embedded_dir).resolve()
        name = "embedded" if is_embedded else "fashion-mnist"
        return DataSource(name, origin, directory, files)

    candidates = [("system", system_dir)]
    candidates += [
        ("torchvision", Path(root).expanduser() / "FashionMNIST" / "raw")
        for root in torchvision_roots
    ]
    for origin, directory in candidates:
        files = _files_in(directory)
        if files is not None:
            return DataSource("fashion-mnist", origin, directory, files)

    files = _files_in(embedded_dir)
    if files is None:
        raise DataError(f"{embedded_dir}: the embedded subset is missing")
    return DataSource("embedded", "embedded", embedded_dir, files)


def _present(directory: Path, stem: str) -> bool:
    """True when ``stem`` or ``stem.gz`` is a file in ``directory``."""
    return any((directory / n).is_file() for n in (stem, stem + ".gz"))


def load_data(
    source: DataSource,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and cross-check the four files of ``source``.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``, images
        ``uint8`` of shape ``(n, 28, 28)``, labels ``uint8`` of shape ``(n,)``.

    Raises:
        DataError: a file fails :func:`read_idx`, images are not 28x28, labels
            are outside 0..9, or image and label counts differ.
    """
    arrays = {}
    for key, path in source.files.items():
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        arrays[key] = read_idx(path, magic)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        img_path = source.files[f"{part}_images"]
        lab_path = source.files[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(
                f"{img_path}: images of shape {images.shape[1:]}, not 28x28"
            )
        if labels.ndim != 1:
            raise DataError(f"{lab_path}: labels of shape {labels.shape}, not 1-d")
        if len(images) != len(labels):
            raise DataError(
                f"{img_path} holds {len(images)} images but {lab_path} holds "
                f"{len(labels)} labels"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{lab_path}: label {labels.max()} outside 0..9")
    return (
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
    )


@dataclasses.dataclass(frozen=True)
class Split:
    """Standardized in-memory tensors of one train/validation/test split.

    Images are ``float32`` of shape ``(n, 1, 28, 28)`` standardized with the
    mean and standard deviation of the training subset; labels ``int64``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float
    std: float


def make_split(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    train_size: int,
    val_size: int,
    seed: int = 0,
) -> Split:
    """Split the training images into disjoint train and validation subsets.

    One seeded permutation of the training images gives the validation
    subset (its first ``val_size`` images) and the training subset (the next
    ``train_size``), so the validation images do not change with
    ``train_size``. The test set is kept whole.

    Raises:
        ValueError: ``train_size`` or ``val_size`` is below 1, or together they
            exceed the training images available.
    """
    available = len(train_images)
    if train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {train_size!r}")
    if val_size < 1:
        raise ValueError(f"val_size must be >= 1, got {val_size!r}")
    if train_size + val_size > available:
        raise ValueError(
            f"train_size + val_size = {train_size} + {val_size} exceeds the "
            f"{available} training images available"
        )
    order = np.random.default_rng(seed).permutation(available)
    val_idx = order[:val_size]
    train_idx = order[val_size : val_size + train_size]

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)

    train_x = to_tensor(train_images[train_idx])
    mean = float(train_x.mean())
    std = float(train_x.std())

    def standardize(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).contiguous()

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return Split(
        train_x=standardize(train_x),
        train_y=labels(train_labels[train_idx]),
        val_x=standardize(to_tensor(train_images[val_idx])),
        val_y=labels(train_labels[val_idx]),
        test_x=standardize(to_tensor(test_images)),
        test_y=labels(test_labels),
        mean=mean,
        std=std,
    )
