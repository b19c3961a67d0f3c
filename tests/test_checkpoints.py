"""Safe checkpoint reading, recurrent-layer discovery and zip-archive extraction."""
from __future__ import annotations

import dataclasses
import pickle
import stat
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analysis.errors import CheckpointError, InvalidInputError, NoRecurrentLayerError, UnsafeCheckpointError
from analysis.trajectories.archives import extract_checkpoint_archive
from analysis.trajectories.checkpoints import load_state_dict, read_safetensors_shapes
from analysis.trajectories.layers import find_recurrent_layers
from analysis.trajectories.trajectory import load_trajectory


class MarkerPayload:
    """Unpickling this would create `path`: proof that code from the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclasses.dataclass
class TrainingConfig:
    hidden: int = 3


def shapes_of(module: nn.Module) -> dict:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


# ---------------------------------------------------------------------------- load_state_dict


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "model_state"])
def test_load_state_dict_unwraps_and_keeps_only_tensors(tmp_path, wrap):
    state = nn.GRU(2, 3).state_dict()
    payload = state if wrap is None else {wrap: {**state, "note": "text"}, "epoch": 4, "lr": 0.1}
    torch.save(payload, tmp_path / "a.pth")
    loaded = load_state_dict(tmp_path / "a.pth")
    assert set(loaded) == set(state)
    for key in state:
        assert torch.equal(loaded[key], state[key])


def test_doubly_nested_checkpoint(tmp_path):
    state = nn.RNN(2, 2).state_dict()
    torch.save({"model": {"state_dict": state}, "step": 3}, tmp_path / "a.pt")
    assert set(load_state_dict(tmp_path / "a.pt", mmap=True)) == set(state)


def test_load_safetensors_and_header_shapes(tmp_path):
    state = nn.LSTM(3, 2).state_dict()
    save_file(state, str(tmp_path / "a.safetensors"))
    assert read_safetensors_shapes(tmp_path / "a.safetensors") == {k: tuple(v.shape) for k, v in state.items()}
    loaded = load_state_dict(tmp_path / "a.safetensors")
    assert all(torch.equal(loaded[key], state[key]) for key in state)


@pytest.mark.parametrize("protocol", ["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "code_ran.txt"
    payload = {"weight_hh_l0": torch.zeros(4, 1), "x": MarkerPayload(marker)}
    target = tmp_path / "evil.pt"
    if protocol == "pickle":
        with open(target, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    else:
        torch.save(payload, target)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_state_dict(target)
    message = str(caught.value)
    assert "evil.pt" in message and "nothing in it was run" in message and "state_dict" in message
    assert not marker.exists()


def test_custom_class_and_whole_module_are_refused(tmp_path):
    torch.save({"config": TrainingConfig(), "w": torch.ones(2)}, tmp_path / "config.pt")
    torch.save(nn.LSTM(2, 2), tmp_path / "module.pt")
    for name in ("config.pt", "module.pt"):
        with pytest.raises(UnsafeCheckpointError, match=name):
            load_state_dict(tmp_path / name)


def test_unreadable_files(tmp_path):
    (tmp_path / "x_1.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=r"x_1\.pt.*not a PyTorch checkpoint"):
        load_state_dict(tmp_path / "x_1.pt")
    save_file({"a": torch.ones(64, 64)}, str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    for reader in (load_state_dict, read_safetensors_shapes):
        with pytest.raises(CheckpointError, match=r"t\.safetensors.*truncated"):
            reader(tmp_path / "t.safetensors")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"weights\.bin.*not a checkpoint"):
        load_state_dict(tmp_path / "weights.bin")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta\.pt.*no tensors"):
        load_state_dict(tmp_path / "meta.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor\.pt.*not a state dict"):
        load_state_dict(tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_state_dict(tmp_path / "missing.pt")


# ---------------------------------------------------------------------- find_recurrent_layers


def test_find_layers_kinds_names_and_bias_keys():
    lstm = find_recurrent_layers(shapes_of(nn.LSTM(3, 5, bias=False)))
    assert [(i.name, i.kind, i.gates, i.input_size, i.hidden_size) for i in lstm] == [("l0", "LSTM", 4, 3, 5)]
    assert lstm[0].bias_ih_key is None and lstm[0].bias_hh_key is None
    gru = find_recurrent_layers({f"enc.{k}": v for k, v in shapes_of(nn.GRU(2, 4)).items()})
    assert [(i.name, i.prefix, i.kind, i.bias_hh_key) for i in gru] == [("enc.l0", "enc", "GRU", "enc.bias_hh_l0")]
    rnn = find_recurrent_layers(shapes_of(nn.RNN(2, 4, num_layers=2, bidirectional=True)))
    assert [i.name for i in rnn] == ["l0", "l0_reverse", "l1", "l1_reverse"]
    assert [i.input_size for i in rnn] == [2, 2, 8, 8]
    assert all(i.kind == "RNN" and i.unit_dim == (i.input_size + 4) for i in rnn)


def test_find_layers_orders_module_lists_numerically():
    model = nn.Module()
    model.rnns = nn.ModuleList([nn.LSTM(2, 2) for _ in range(11)])
    names = [info.name for info in find_recurrent_layers(shapes_of(model))]
    assert names == [f"rnns.{i}.l0" for i in range(11)]


def test_find_layers_refuses_projected_lstm_and_reports_missing_layers():
    with pytest.raises(CheckpointError, match="proj_size"):
        find_recurrent_layers(shapes_of(nn.LSTM(3, 8, proj_size=4)))
    with pytest.raises(CheckpointError, match=r"G = 4 .*not supported"):
        find_recurrent_layers({"rnn.weight_ih_l0": (10, 3), "rnn.weight_hh_l0": (10, 5)})
    with pytest.raises(NoRecurrentLayerError, match=r"model\.pt: .*decoder\.weight"):
        find_recurrent_layers(shapes_of(nn.Sequential()) | {"decoder.weight": (3, 2)}, source="model.pt")


# ------------------------------------------------------------------------------ zip archives


def make_zip(path, members: dict[str, bytes], symlinks=()):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def checkpoint_bytes(tmp_path, step):
    torch.manual_seed(step)
    torch.save(nn.GRU(2, 3).state_dict(), tmp_path / "tmp.pt")
    return (tmp_path / "tmp.pt").read_bytes()


def test_good_zip_extracts_strips_top_folder_and_loads(tmp_path):
    members = {f"run/ckpt_{step}.pt": checkpoint_bytes(tmp_path, step) for step in (3, 20, 100)}
    members["__MACOSX/run/._ckpt_3.pt"] = b"resource fork"
    archive = make_zip(tmp_path / "my run.zip", members)
    destination = tmp_path / "uploads"
    first = extract_checkpoint_archive(archive, destination)
    second = extract_checkpoint_archive(archive, destination)
    assert first.parent == destination and first != second
    assert sorted(p.name for p in first.iterdir()) == ["ckpt_100.pt", "ckpt_20.pt", "ckpt_3.pt"]
    assert load_trajectory(first).steps.tolist() == [3, 20, 100]
    assert sorted(p.name for p in destination.iterdir()) == sorted([first.name, second.name])


@pytest.mark.parametrize(
    "members, symlinks, match",
    [
        ({"../evil.pt": b"x", "a_1.pt": b"x"}, (), r"outside"),
        ({"ok/../../evil.pt": b"x"}, (), r"outside"),
        ({"/abs/evil.pt": b"x"}, (), r"absolute"),
        ({"a_1.pt": b"x"}, [("link_2.pt", "/etc/passwd")], r"symbolic link"),
        ({"a_1.pt": b"x", "run.sh": b"echo"}, (), r"run\.sh.*not a checkpoint"),
        ({"notes.json": b"{}"}, (), r"no \.pt"),
    ],
)
def test_bad_zip_members_are_refused_and_nothing_is_left(tmp_path, members, symlinks, match):
    archive = make_zip(tmp_path / "bad.zip", members, symlinks)
    destination = tmp_path / "uploads"
    with pytest.raises(InvalidInputError, match=match):
        extract_checkpoint_archive(archive, destination)
    assert list(destination.iterdir()) == []
    assert not (tmp_path / "evil.pt").exists()


def test_zip_bomb_and_file_count_limits(tmp_path):
    # 50 MB of zeros compresses to about 50 KB.
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ckpt_1.pt", b"\0" * 50_000_000)
    assert bomb.stat().st_size < 1_000_000
    destination = tmp_path / "uploads"
    with pytest.raises(InvalidInputError, match="more than 1000000 bytes"):
        extract_checkpoint_archive(bomb, destination, max_total_bytes=1_000_000)
    many = make_zip(tmp_path / "many.zip", {f"ckpt_{i}.pt": b"x" for i in range(6)})
    with pytest.raises(InvalidInputError, match="more than 5 files"):
        extract_checkpoint_archive(many, destination, max_files=5)
    assert list(destination.iterdir()) == []


def test_not_a_zip(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(InvalidInputError, match=r"fake\.zip.*not a readable zip"):
        extract_checkpoint_archive(tmp_path / "fake.zip", tmp_path / "out")


def test_corrupt_member_is_refused_and_nothing_is_left(tmp_path):
    archive = make_zip(tmp_path / "c.zip", {"ckpt_1.pt": b"A" * 1000, "ckpt_2.pt": b"B" * 1000})
    data = bytearray(archive.read_bytes())
    data[data.index(b"B" * 100) + 50] ^= 0xFF  # stored member: the CRC check fails
    archive.write_bytes(bytes(data))
    destination = tmp_path / "uploads"
    with pytest.raises(InvalidInputError, match=r"c\.zip.*cannot unpack"):
        extract_checkpoint_archive(archive, destination)
    assert list(destination.iterdir()) == []
