"""Dataset files someone else wrote are read without running anything they carry (issue 27, item 3).

A pickle runs whatever callable it names while it loads. The CIFAR-10 batches are pickles, so a
tampered `test_batch` must be refused before its payload runs, while the real format (Python 2
cPickle, protocol 2, numpy 1 module paths; or the same dict pickled again under Python 3) still
loads. The .npy/.npz files of CIFAR-10.1, 10.2 and 10-C must never unpickle object arrays.
"""
import os
import pickle
import shutil
import struct
import subprocess

import numpy as np
import pytest
import fabricate
from autoft import cli
from autoft.data import cifar
from autoft.errors import UserError
from conftest import compose_config

C = fabricate.CIFAR10C


class Payload:
    """Pickles as a call of `fn(*args)`: what a tampered dataset file would carry."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def touch_payloads(marker):
    """Three ways a pickle could create `marker`: a shell command, Python source, a subprocess."""
    return {"os.system": Payload(os.system, f"touch {marker}"),
            "builtins.eval": Payload(eval, f"open({str(marker)!r}, 'w').close()"),
            "subprocess.call": Payload(subprocess.call, ["touch", str(marker)])}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_clean")
    return root, fabricate.make_cifar10(root)


@pytest.fixture
def copy(tree, tmp_path):
    root = tmp_path / "cifar"
    shutil.copytree(tree[0], root)
    return root


def read_batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")  # the test's own file: trusted here


def write_batch(path, batch, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def task(root):
    """The task as `train.py method=zeroshot dataset=cifar10` builds it (cli.build_task)."""
    cfg = compose_config("method=zeroshot", "dataset=cifar10", f"data_root={root}", "dataset.task.ood_val_size=10",
                         f"dataset.task.corruptions=[{','.join(C)}]")
    return cli.build_task(cfg)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 pickles


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "subprocess.call"])
def test_a_test_batch_carrying_code_is_refused_before_it_runs(copy, tmp_path, how):
    marker = tmp_path / "pwned"
    bad = copy / "cifar-10-batches-py" / "test_batch"
    batch = read_batch(bad)
    batch[b"filenames"][0] = touch_payloads(marker)[how]  # one field of an otherwise valid batch
    write_batch(bad, batch)
    with pytest.raises(UserError) as err:
        task(copy)
    assert not marker.exists(), "the payload ran"
    message = str(err.value)
    assert str(bad) in message and "is not a valid CIFAR-10 batch" in message and "may carry code" in message
    assert f"python scripts/prepare_data.py --dataset cifar10 --root {copy} --download" in message
    # the data check (scripts/prepare_data.py) reports the same file, and runs nothing either
    report = cifar.check(copy, corruptions=C)
    assert not marker.exists() and not report.complete
    assert any(str(bad) in p and "may carry code" in p for p in report.problems)


def test_the_refusal_names_the_object_and_works_for_every_batch_file(copy, tmp_path):
    marker = tmp_path / "pwned"
    meta = copy / "cifar-10-batches-py" / "batches.meta"
    write_batch(meta, {b"label_names": [n.encode() for n in fabricate.CIFAR_NAMES],
                       b"num_vis": touch_payloads(marker)["os.system"]}, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UserError, match=rf"{meta} is not a valid CIFAR-10 batch: it names the Python object "
                                        rf"(posix|os|nt)\.system"):
        cifar.load_cifar10(copy)
    assert not marker.exists()


def test_bytes_spelled_through_another_codec_are_refused(copy):
    """Python 3 pickles bytes at protocol 2 as _codecs.encode(text, 'latin1'); that global is allowed
    for latin1 only, so it cannot be used to reach another codec."""
    bad = copy / "cifar-10-batches-py" / "data_batch_2"
    batch = read_batch(bad)
    batch[b"batch_label"] = Payload(__import__("_codecs").encode, "x", "rot13")
    write_batch(bad, batch)
    with pytest.raises(UserError, match=rf"{bad} is not a valid CIFAR-10 batch: .*_codecs.encode with encoding 'rot13'"):
        cifar.load_cifar10(copy)


def test_a_code_free_pickle_of_the_wrong_shape_is_one_message(copy):
    bad = copy / "cifar-10-batches-py" / "data_batch_4"
    for obj, expected in (([1, 2, 3], "expected a dict with keys b'data' and b'labels', found list"),
                          ({b"data": b"\x00" * 3072, b"labels": [1]}, "expected uint8 \\[N, 3072\\]")):
        write_batch(bad, obj)
        with pytest.raises(UserError, match=rf"corrupt CIFAR-10 file: {bad} .*{expected}"):
            cifar.load_cifar10(copy)


@pytest.mark.parametrize("protocol", [0, 2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_batches_pickled_as_the_release_and_by_python3_load_unchanged(tree, copy, protocol):
    """pickle.dump of the release's dict (numpy arrays, bytes keys): protocol 2 as the originals, the
    default protocol, and protocol 5, whose arrays numpy rebuilds with _frombuffer."""
    d = copy / "cifar-10-batches-py"
    originals = {name: read_batch(d / name) for name in ("data_batch_1", "test_batch", "batches.meta")}
    for name, obj in originals.items():
        write_batch(d / name, obj, protocol=protocol)
    data = cifar.load_cifar10(copy)
    test = originals["test_batch"]
    assert np.array_equal(data["test"][0], test[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(data["test"][1], test[b"labels"]) and data["test"][1].dtype == np.int64
    assert np.array_equal(data["train"][0][:10], originals["data_batch_1"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert data["classnames"] == fabricate.CIFAR_NAMES
    clean = cifar.load_cifar10(tree[0])
    assert all(np.array_equal(a, b) for a, b in zip(data["train"] + data["test"], clean["train"] + clean["test"]))


def py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle.dump(obj, f, 2) wrote the CIFAR-10 release with numpy 1: str is
    BINSTRING (bytes here), ints BININT, arrays rebuilt by numpy.core.multiarray._reconstruct."""
    def enc(x) -> bytes:
        if isinstance(x, bool):
            return b"\x88" if x else b"\x89"
        if x is None:
            return b"N"
        if isinstance(x, int):
            return b"K" + bytes([x]) if 0 <= x < 256 else b"J" + struct.pack("<i", x)
        if isinstance(x, bytes):
            return b"U" + bytes([len(x)]) + x if len(x) < 256 else b"T" + struct.pack("<I", len(x)) + x
        if isinstance(x, tuple):
            return b"(" + b"".join(map(enc, x)) + b"t"
        if isinstance(x, list):
            return b"](" + b"".join(map(enc, x)) + b"e"
        if isinstance(x, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in x.items()) + b"u"
        if isinstance(x, np.ndarray):
            dtype = (b"cnumpy\ndtype\n" + enc((x.dtype.str[1:].encode(), False, True)) + b"R"
                     + enc((3, x.dtype.str[:1].encode(), None, None, None, -1, -1, 0)) + b"b")
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"(cnumpy\nndarray\n" + enc((0,)) + enc(b"b") + b"tR"
                    + b"(" + enc(1) + enc(x.shape) + dtype + enc(False) + enc(x.tobytes()) + b"tb")
        raise TypeError(type(x))
    return b"\x80\x02" + enc(obj) + b"."


def test_batches_in_the_python2_numpy1_format_of_the_release_load(tree, copy):
    d = copy / "cifar-10-batches-py"
    test = read_batch(d / "test_batch")
    blob = py2_pickle(test)
    assert b"numpy.core.multiarray\n_reconstruct" in blob and b"_codecs" not in blob
    (d / "test_batch").write_bytes(blob)
    (d / "batches.meta").write_bytes(py2_pickle(read_batch(d / "batches.meta")))
    data = cifar.load_cifar10(copy)
    assert np.array_equal(data["test"][0], cifar.load_cifar10(tree[0])["test"][0])
    assert data["test"][1].tolist() == test[b"labels"] and data["classnames"] == fabricate.CIFAR_NAMES


# ------------------------------------------------------------------------------------------------
# CIFAR-10.1 / 10.2 / 10-C: numpy files never unpickle


def object_array(marker):
    return np.array([touch_payloads(marker)["os.system"], 1], dtype=object)


def test_npy_and_npz_files_holding_pickled_objects_are_refused(copy, tmp_path):
    marker = tmp_path / "pwned"
    refused = "it holds pickled Python objects, not a plain numeric array; refused unread"
    f101 = copy / "CIFAR-10.1" / "cifar10.1_v6_labels.npy"
    np.save(f101, object_array(marker), allow_pickle=True)
    with pytest.raises(UserError, match=rf"corrupt CIFAR-10.1 v6 labels file: {f101} \({refused}"):
        cifar.load_cifar101(copy)
    f102 = copy / "CIFAR-10.2" / "cifar102_test.npz"
    np.savez(f102, images=object_array(marker), labels=np.arange(2))
    with pytest.raises(UserError, match=rf"corrupt CIFAR-10.2 file: {f102} \({refused}"):
        cifar.load_cifar102(copy)
    fc = copy / "CIFAR-10-C" / "fog.npy"  # read memory-mapped
    np.save(fc, object_array(marker), allow_pickle=True)
    with pytest.raises(UserError, match=rf"corrupt CIFAR-10-C 'fog' file: {fc} \({refused}"):
        cifar.cifar10c_pool(copy, ["fog"], 5, None)
    with open(copy / "CIFAR-10-C" / "labels.npy", "wb") as f:  # a bare pickle under a .npy name
        pickle.dump(object_array(marker), f)
    with pytest.raises(UserError, match=rf"corrupt CIFAR-10-C labels file: .*labels.npy \({refused}"):
        cifar.cifar10c_pool(copy, ["fog"], 5, None)
    assert not marker.exists()


def test_the_cifar102_train_file_read_for_the_swap_check_is_refused_too(copy, tmp_path):
    marker = tmp_path / "pwned"
    train = copy / "CIFAR-10.2" / "cifar102_train.npz"
    np.savez(train, images=np.zeros((1, 32, 32, 3), np.uint8), labels=object_array(marker))
    with pytest.raises(UserError, match=rf"corrupt CIFAR-10.2 file: {train} \(it holds pickled Python objects"):
        cifar.load_cifar102(copy)
    assert not marker.exists()
