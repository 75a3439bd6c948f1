"""The IDX reader, the data-set locator, the embedded subset and the split."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from weightdecay.experiments import data
from weightdecay.experiments.data import (
    EMBEDDED_DIR,
    ENV_VAR,
    DataError,
    find_data,
    load_data,
    make_split,
    read_idx,
)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file written from the format's definition, independently."""
    header = struct.pack(">I", magic) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_set(directory: Path, n_train=6, n_test=4, compress=True, rng_seed=0):
    """Four IDX files of random images and labels; returns the arrays."""
    rng = np.random.default_rng(rng_seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    for key, array in arrays.items():
        magic = 0x803 if key.endswith("images") else 0x801
        payload = idx_bytes(array, magic)
        name = data.FILES[key] + (".gz" if compress else "")
        (directory / name).write_bytes(gzip.compress(payload) if compress else payload)
    return arrays


def test_reads_raw_and_gzipped_files_to_the_same_array(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    (tmp_path / "raw").write_bytes(idx_bytes(images, 0x803))
    (tmp_path / "gz").write_bytes(gzip.compress(idx_bytes(images, 0x803)))
    for name in ("raw", "gz"):
        got = read_idx(tmp_path / name, 0x803)
        assert got.dtype == np.uint8 and got.shape == (2, 28, 28)
        np.testing.assert_array_equal(got, images)


def test_truncated_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28)), 0x803)[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        read_idx(path, 0x803)


def test_truncated_gzip_stream_is_an_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28)), 0x803))[:-20])
    with pytest.raises(DataError, match=r"x\.gz"):
        read_idx(path, 0x803)


def test_labels_file_where_images_are_expected_is_an_error(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(5), 0x801))
    with pytest.raises(
        DataError, match=r"magic number 0x00000801, expected 0x00000803"
    ):
        read_idx(path, 0x803)


def test_non_idx_file_is_an_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is not an IDX file")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(path)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"nothing-here.*not found"):
        read_idx(tmp_path / "nothing-here")


def test_image_and_label_counts_must_agree(tmp_path):
    write_set(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(3), 0x801)))
    with pytest.raises(DataError, match="holds 4 images but .* holds 3 labels"):
        load_data(find_data(tmp_path))


def test_load_data_returns_what_was_written_raw_or_gzipped(tmp_path):
    for compress in (True, False):
        arrays = write_set(tmp_path / str(compress), compress=compress)
        got = load_data(find_data(tmp_path / str(compress)))
        for want, have in zip(arrays.values(), got, strict=True):
            np.testing.assert_array_equal(have, want)


def locate(tmp_path, data_dir=None, env=None):
    """find_data with every location under ``tmp_path``."""
    return find_data(
        data_dir,
        environ={} if env is None else {ENV_VAR: str(env)},
        system_dir=tmp_path / "system",
        torchvision_roots=[tmp_path / "tv"],
        embedded_dir=tmp_path / "embedded",
    )


def test_locator_precedence_flag_env_system_torchvision_embedded(tmp_path):
    for name in ("flag", "env", "system", "tv/FashionMNIST/raw", "embedded"):
        write_set(tmp_path / name)
    assert locate(tmp_path, tmp_path / "flag", tmp_path / "env").origin == "--data-dir"
    assert locate(tmp_path, None, tmp_path / "env").origin == ENV_VAR
    assert locate(tmp_path).origin == "system"
    (tmp_path / "system" / "train-images-idx3-ubyte.gz").unlink()
    found = locate(tmp_path)
    assert found.origin == "torchvision"
    assert found.directory == tmp_path / "tv" / "FashionMNIST" / "raw"
    (found.directory / "t10k-labels-idx1-ubyte.gz").unlink()
    found = locate(tmp_path)
    assert (found.origin, found.source) == ("embedded", "embedded")


def test_a_named_directory_without_the_files_never_falls_back(tmp_path):
    write_set(tmp_path / "system")
    write_set(tmp_path / "embedded")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"--data-dir=.*empty.*not falling back"):
        locate(tmp_path, tmp_path / "empty")
    with pytest.raises(DataError, match=rf"{ENV_VAR}=.*missing.*not falling back"):
        locate(tmp_path, None, tmp_path / "missing")


def test_embedded_subset_is_class_balanced_small_and_licensed():
    found = find_data(
        None, environ={}, system_dir=Path("/nonexistent"), torchvision_roots=[]
    )
    assert found.source == "embedded"
    train_x, train_y, test_x, test_y = load_data(found)
    assert train_x.shape == (10_000, 28, 28) and test_x.shape == (2_000, 28, 28)
    assert np.bincount(train_y).tolist() == [1000] * 10
    assert np.bincount(test_y).tolist() == [200] * 10
    total = sum(p.stat().st_size for p in EMBEDDED_DIR.iterdir())
    assert total < 6 * 2**20
    notice = (EMBEDDED_DIR / "NOTICE").read_text()
    assert "MIT" in notice and "Copyright (c) 2017 Zalando SE" in notice


def test_split_is_disjoint_seeded_and_standardized_on_the_train_subset():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 28, 28)).astype(np.uint8)
    images[:, 0, 0] = np.arange(50)  # a unique tag per image
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    test = rng.integers(0, 256, (7, 28, 28)).astype(np.uint8)
    split = make_split(images, labels, test, labels[:7], 20, 10, seed=3)

    def tags(x, split=split):
        pixels = (x[:, 0, 0, 0].double() * split.std + split.mean) * 255
        return {round(t) for t in pixels.tolist()}

    train_tags = tags(split.train_x)
    val_tags = tags(split.val_x)
    assert len(train_tags) == 20 and len(val_tags) == 10
    assert not train_tags & val_tags
    raw_train = images[sorted(train_tags)].astype(np.float64) / 255
    assert split.mean == pytest.approx(raw_train.mean(), rel=1e-5)
    assert split.std == pytest.approx(raw_train.std(ddof=1), rel=1e-4)
    assert float(split.train_x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert split.test_x.shape == (7, 1, 28, 28)

    again = make_split(images, labels, test, labels[:7], 30, 10, seed=3)
    assert tags(again.val_x, again) == val_tags

    with pytest.raises(ValueError, match=r"train_size \+ val_size = 45 \+ 10"):
        make_split(images, labels, test, labels[:7], 45, 10)
