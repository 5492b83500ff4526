"""Built-in data sets, file and import-path data, validation, splitting and batching."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.data import (
    IGNORE_INDEX,
    Dataset,
    iterate_batches,
    list_data,
    load_data,
    split_text_corpus,
    text_corpus_bytes,
    text_sequences,
    train_eval_split,
    validate_labels,
)
from landscape.errors import UserError


@pytest.fixture
def isolated_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


# ------------------------------------------------------------------------------------------------
# Built-ins


def test_list_data() -> None:
    names = list_data()
    assert {"digits", "text", "text-train", "text-eval"} <= set(names)
    assert all(d and "\n" not in d for d in names.values())


def test_digits() -> None:
    ds = load_data("digits")
    assert isinstance(ds, Dataset) and len(ds) == 1797
    assert ds.x.shape == (1797, 64) and ds.x.dtype == torch.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == torch.long
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.num_classes == 10 and ds.task == "classification" and ds.name == "digits"
    assert sorted(ds.y.unique().tolist()) == list(range(10))
    # real handwritten digits: pixel values are multiples of 1/16 and images differ
    assert torch.allclose(ds.x * 16, (ds.x * 16).round())
    assert len(torch.unique(ds.x, dim=0)) > 1700
    x, y = ds[3]
    assert torch.equal(x, ds.x[3]) and int(y) == int(ds.y[3])


def test_digits_samples_and_dtype() -> None:
    full = load_data("digits")
    head = load_data("digits", samples=100, dtype=torch.float64, seed=5)
    assert len(head) == 100 and head.x.dtype == torch.float64
    assert torch.equal(head.x.float(), full.x[:100]) and torch.equal(head.y, full.y[:100])
    assert len(load_data("digits", samples=10_000)) == 1797


def test_text_corpus_and_sequences() -> None:
    corpus = text_corpus_bytes()
    assert len(corpus) > 400_000
    assert b"while" in corpus and b"The" in corpus
    ds = load_data("text")
    n = len(corpus) // 65
    assert ds.x.shape == (n, 64) and ds.y.shape == (n, 64)
    assert ds.x.dtype == torch.long and ds.y.dtype == torch.long
    assert ds.task == "language_model" and ds.num_classes == 256
    assert int(ds.x.min()) >= 0 and int(ds.x.max()) <= 255
    assert torch.equal(ds.x[:, 1:], ds.y[:, :-1])  # y is x shifted by one
    # non-overlapping chunks of seq_len + 1 bytes straight from the corpus
    assert bytes(ds.x[1].tolist()) == corpus[65 : 65 + 64]
    assert int(ds.y[0, -1]) == corpus[64]
    short = load_data("text", seq_len=16, samples=50)
    assert short.x.shape == (50, 16)


def test_text_split_is_disjoint_and_complete() -> None:
    train, held = split_text_corpus()
    corpus = text_corpus_bytes()
    assert train + held == corpus
    assert len(held) == pytest.approx(0.1 * len(corpus), abs=1)
    a, b = load_data("text-train"), load_data("text-eval")
    assert len(a) == len(train) // 65 and len(b) == len(held) // 65
    assert not torch.equal(a.x[0], b.x[0])
    with pytest.raises(UserError, match="fraction"):
        split_text_corpus(1.5)


def test_text_sequences_errors() -> None:
    with pytest.raises(UserError, match="too short"):
        text_sequences(b"abc", seq_len=8)
    with pytest.raises(UserError, match="seq_len"):
        load_data("text", seq_len=0)


# ------------------------------------------------------------------------------------------------
# Files


def test_pt_round_trip(tmp_path: Path) -> None:
    x = torch.rand(20, 5)
    y = torch.arange(20) % 3
    torch.save({"x": x, "y": y, "num_classes": 4}, tmp_path / "d.pt")
    ds = load_data(str(tmp_path / "d.pt"))
    assert torch.equal(ds.x, x) and torch.equal(ds.y, y)
    assert ds.task == "classification" and ds.num_classes == 4
    assert load_data(str(tmp_path / "d.pt"), samples=7).x.shape == (7, 5)


def test_npz_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((12, 3))
    y = np.arange(12) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_data(str(tmp_path / "d.npz"), dtype=torch.float64)
    assert torch.equal(ds.x, torch.from_numpy(x)) and torch.equal(ds.y, torch.from_numpy(y))
    assert ds.y.dtype == torch.long and ds.num_classes is None


def test_file_task_inference(tmp_path: Path) -> None:
    tokens = torch.randint(0, 50, (6, 9))
    torch.save({"x": tokens[:, :-1], "y": tokens[:, 1:]}, tmp_path / "lm.pt")
    lm = load_data(str(tmp_path / "lm.pt"))
    assert lm.task == "language_model" and lm.x.dtype == torch.long
    np.savez(tmp_path / "reg.npz", x=np.ones((4, 2)), y=np.linspace(0, 1, 4))
    reg = load_data(str(tmp_path / "reg.npz"))
    assert reg.task == "regression" and reg.y.dtype == torch.float32 and reg.x.dtype == torch.float32
    # integer inputs with one label per row: sequence classification, token ids stay long
    np.savez(tmp_path / "seqcls.npz", x=np.ones((4, 7), dtype=np.int32), y=np.array([0, 1, 1, 0]))
    seqcls = load_data(str(tmp_path / "seqcls.npz"))
    assert seqcls.task == "classification" and seqcls.x.dtype == torch.long


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"x": torch.rand(4, 2)}, "lacks key.*'y'"),
        ({"inputs": torch.rand(4, 2), "y": torch.zeros(4)}, "lacks key.*'x'"),
        ({"x": torch.rand(4, 2), "y": torch.zeros(3, dtype=torch.long)}, "x has 4 samples but y has 3"),
        ({"x": torch.rand(0, 2), "y": torch.zeros(0, dtype=torch.long)}, "empty"),
        (
            {"x": torch.tensor([[1.0, float("nan")]]), "y": torch.zeros(1, dtype=torch.long)},
            "NaN or infinite",
        ),
        (
            {"x": torch.tensor([[1.0, float("inf")]]), "y": torch.zeros(1, dtype=torch.long)},
            "NaN or infinite",
        ),
        ({"x": torch.rand(2, 2), "y": torch.tensor([0.5, float("nan")])}, "targets y contain 1 NaN"),
        ({"x": torch.rand(3, 2), "y": torch.tensor([0, -3, 1])}, "negative labels -3"),
        (
            {"x": torch.rand(2, 2), "y": torch.tensor([0, 5]), "num_classes": 3},
            "labels go up to 5.*only 3 classes",
        ),
        ([torch.rand(2)], "holds a list; expected a dict"),
        ({"x": torch.rand(2, 2), "y": torch.zeros(2, dtype=torch.long), "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_pt_files(tmp_path: Path, payload: object, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(UserError, match=message):
        load_data(str(path))


def test_ignore_index_labels_are_allowed(tmp_path: Path) -> None:
    torch.save(
        {"x": torch.rand(3, 2), "y": torch.tensor([0, IGNORE_INDEX, 2]), "num_classes": 3}, tmp_path / "d.pt"
    )
    assert int(load_data(str(tmp_path / "d.pt")).y[1]) == -100


def test_missing_corrupt_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data file not found: .*nope.pt"):
        load_data(str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="data file not found"):
        load_data(str(tmp_path / "nope.npz"))
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage bytes")
    with pytest.raises(UserError, match="cannot read data file .*garbage.pt"):
        load_data(str(tmp_path / "garbage.pt"))
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="cannot read data file .*garbage.npz"):
        load_data(str(tmp_path / "garbage.npz"))
    good = tmp_path / "good.pt"
    torch.save({"x": torch.rand(50, 20), "y": torch.zeros(50, dtype=torch.long)}, good)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match="cannot read data file"):
        load_data(str(tmp_path / "trunc.pt"))
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(UserError, match="unsupported data file type '.csv'"):
        load_data(str(tmp_path / "d.csv"))
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(UserError, match="not a file"):
        load_data(str(tmp_path / "folder.pt"))


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    with pytest.raises(UserError, match="lacks array.*'x'"):
        load_data(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2))
    with pytest.raises(UserError, match="object arrays"):
        load_data(str(tmp_path / "obj.npz"))


class _Opaque:
    pass


def test_pickled_objects_in_pt_are_refused(tmp_path: Path) -> None:
    torch.save({"x": torch.rand(2, 2), "y": _Opaque()}, tmp_path / "obj.pt")
    with pytest.raises(UserError, match="weights-only"):
        load_data(str(tmp_path / "obj.pt"))


def test_unknown_builtin_lists_valid_names() -> None:
    with pytest.raises(UserError, match="unknown data set 'mnist'.*digits, text"):
        load_data("mnist")
    with pytest.raises(UserError, match="samples"):
        load_data("digits", samples=0)
    with pytest.raises(UserError, match="dtype"):
        load_data("digits", dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# Import paths

DATA_SOURCE = """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.arange(24, dtype=torch.float32).reshape(12, 2) / 24
    Y = torch.arange(12) % 3

    def pair():
        return X, Y

    def numpy_pair():
        return X.numpy(), Y.numpy()

    def tensor_dataset():
        return TensorDataset(X, Y)

    def loader():
        return DataLoader(TensorDataset(X, Y), batch_size=5, shuffle=False)

    class ListData:
        def __len__(self):
            return 12
        def __getitem__(self, i):
            return X[i].tolist(), int(Y[i])

    def as_dict():
        return {"x": X, "y": Y, "num_classes": 3}

    instance = TensorDataset(X, Y)

    def landscape_dataset():
        from landscape.data import Dataset
        return Dataset(X, Y, name="custom", task="classification", num_classes=3)

    def broken():
        raise ValueError("no data today")

    def wrong():
        return "a string"

    def triples():
        return [(X[i], Y[i], 0) for i in range(3)]

    def nan_pair():
        return torch.full((2, 2), float("nan")), torch.zeros(2, dtype=torch.long)
"""


def _write_module(directory: Path, source: str) -> str:
    name = f"user_data_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


@pytest.mark.parametrize(
    "attr",
    [
        "pair",
        "numpy_pair",
        "tensor_dataset",
        "loader",
        "ListData",
        "as_dict",
        "instance",
        "landscape_dataset",
    ],
)
def test_import_path_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_sys_path: None, attr: str
) -> None:
    monkeypatch.chdir(tmp_path)
    mod = _write_module(tmp_path, DATA_SOURCE)
    ds = load_data(f"{mod}:{attr}")
    expected_x = torch.arange(24, dtype=torch.float32).reshape(12, 2) / 24
    assert torch.allclose(ds.x, expected_x)
    assert torch.equal(ds.y, torch.arange(12) % 3)
    assert ds.task == "classification" and ds.name == f"{mod}:{attr}"
    assert load_data(f"{mod}:{attr}", samples=4).x.shape == (4, 2)


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("nothing_here", "cannot import data function"),
        ("broken", "data function '.*:broken' failed: ValueError: no data today"),
        ("wrong", "gave a str"),
        ("triples", "expected \\(x, y\\) pairs"),
        ("nan_pair", "NaN"),
    ],
)
def test_import_path_data_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_sys_path: None, attr: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    mod = _write_module(tmp_path, DATA_SOURCE)
    with pytest.raises(UserError, match=message):
        load_data(f"{mod}:{attr}")


# ------------------------------------------------------------------------------------------------
# Labels, splitting, batching


def test_validate_labels() -> None:
    validate_labels(torch.tensor([0, 9, -100]), 10)
    validate_labels(torch.tensor([[1, 2], [3, -100]]), 4)
    validate_labels(torch.tensor([0.5, -3.0]), 1)  # regression targets are not class ids
    with pytest.raises(UserError, match="labels go up to 10 but there are only 10 classes"):
        validate_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(UserError, match="negative labels -1"):
        validate_labels(torch.tensor([-1, 2]), 10)
    with pytest.raises(UserError, match="ignore index"):
        validate_labels(torch.tensor([-100, -100]), 10)


def test_train_eval_split() -> None:
    ds = load_data("digits", samples=200)
    train, evl = train_eval_split(ds, 0.25, seed=3)
    assert len(train) == 150 and len(evl) == 50
    rows = torch.cat([train.x, evl.x])
    assert len(torch.unique(rows, dim=0)) == len(torch.unique(ds.x, dim=0))
    train2, evl2 = train_eval_split(ds, 0.25, seed=3)
    assert torch.equal(evl.x, evl2.x) and torch.equal(train.y, train2.y)
    _, evl3 = train_eval_split(ds, 0.25, seed=4)
    assert not torch.equal(evl.x, evl3.x)
    assert evl.num_classes == 10 and evl.task == "classification"
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(UserError, match="eval fraction"):
            train_eval_split(ds, bad, seed=0)
    with pytest.raises(UserError, match="at least 2"):
        train_eval_split(ds.subset(slice(0, 1)), 0.5)


def test_iterate_batches() -> None:
    ds = load_data("digits", samples=10)
    batches = iterate_batches(ds, 4)
    assert [len(bx) for bx, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([bx for bx, _ in batches]), ds.x)
    assert torch.equal(torch.cat([by for _, by in batches]), ds.y)
    assert len(iterate_batches((ds.x, ds.y), 100)) == 1
    with pytest.raises(UserError, match="batch size"):
        iterate_batches(ds, 0)


def test_dataset_helpers() -> None:
    ds = load_data("digits", samples=6)
    sub = ds.subset([0, 2])
    assert torch.equal(sub.x, ds.x[[0, 2]]) and sub.name == "digits"
    assert "digits" in repr(ds)
    assert ds.to("cpu").x.device.type == "cpu"
