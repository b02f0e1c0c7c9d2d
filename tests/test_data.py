"""MNIST loading: shapes, dtypes, known label counts, and clear errors for bad files."""
import gzip
import os
import shutil
import struct

import numpy as np
import pytest

from minidiff.data import mnist as data
from minidiff.data.mnist import MnistDataError, from_unit_range, load_mnist, to_unit_range


def test_train_split_matches_the_published_counts():
    images, labels = load_mnist("train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int64
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(labels).tolist() == counts


def test_test_split_shape():
    images, labels = load_mnist("test")
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert 0 < images.mean() < 255


def test_unit_range_round_trip_is_exact():
    images, _ = load_mnist("test")
    x = to_unit_range(images[:16])
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(from_unit_range(x), images[:16])


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'valid'"):
        load_mnist("valid")


def _copy_root(tmp_path):
    root = tmp_path / "mnist"
    shutil.copytree(data.DEFAULT_ROOT, root)
    return root


def test_missing_file_names_it_and_says_how_to_restore(tmp_path):
    root = _copy_root(tmp_path)
    os.remove(root / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(MnistDataError, match="missing.*t10k-labels-idx1-ubyte.gz.*restore"):
        load_mnist("test", root=str(root))


def test_truncated_file_fails_its_checksum(tmp_path):
    root = _copy_root(tmp_path)
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MnistDataError, match="corrupt or truncated.*t10k-images"):
        load_mnist("test", root=str(root))


def test_checksum_is_of_the_content_not_of_the_compression(tmp_path):
    """The same IDX bytes compressed again (another level) load; one changed pixel does not."""
    root = _copy_root(tmp_path)
    path = root / "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    assert load_mnist("test", root=str(root))[1].shape == (10_000,)
    changed = bytearray(content)
    changed[-1] = (changed[-1] + 1) % 10
    path.write_bytes(gzip.compress(bytes(changed)))
    data._verified.discard(str(path))
    with pytest.raises(MnistDataError, match="corrupt.*t10k-labels.*sha256"):
        load_mnist("test", root=str(root))


def test_data_search_order_and_the_readme_paths_from_any_folder(tmp_path, monkeypatch):
    from minidiff.data import paths
    monkeypatch.chdir(tmp_path)                    # not a clone: found in the source tree
    found = paths.resolve_user_path("data/checkpoints/quick.npz")
    assert os.path.isabs(found) and os.path.exists(found)
    assert paths.resolve_user_path("elsewhere/quick.npz") == "elsewhere/quick.npz"
    (tmp_path / "data" / "mnist").mkdir(parents=True)          # the working folder comes first
    assert paths.find("mnist") == str(tmp_path / "data" / "mnist")
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "mine"))  # and MINIDIFF_DATA before it
    with pytest.raises(paths.DataNotFoundError, match=r"MINIDIFF_DATA.*mine.*mnist"):
        paths.find("mnist")


def test_bad_header_is_reported_when_the_file_is_unknown(tmp_path):
    # a file not in the checksum table still has its header checked
    path = tmp_path / "tiny-images.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(struct.pack(">4i", 2051, 3, 2, 2) + bytes(5))
    with pytest.raises(MnistDataError, match="header promises 12 values.*found 5"):
        data._read_idx(str(path), 2051)
    with gzip.open(path, "wb") as stream:
        stream.write(struct.pack(">4i", 1234, 1, 1, 1) + bytes(1))
    with pytest.raises(MnistDataError, match="magic number 1234, expected 2051"):
        data._read_idx(str(path), 2051)
