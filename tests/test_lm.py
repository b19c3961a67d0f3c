"""RNN language models: shapes for every cell type, presets, and checkpoints plain PyTorch can load."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch

from analysis.errors import CheckpointError, InvalidInputError, UnsafeCheckpointError
from analysis.lm.model import PRESETS, ModelConfig, RNNLanguageModel, load_model, save_model
from analysis.lm.training import TrainConfig

VOCAB = {"itos": [f"w{i}" for i in range(11)]}




def tiny_model(rnn_type="LSTM", hidden_sizes=(5, 7, 3), **kwargs) -> RNNLanguageModel:
    torch.manual_seed(0)
    return RNNLanguageModel(ModelConfig(vocab_size=11, embedding_size=4, hidden_sizes=list(hidden_sizes),
                                        rnn_type=rnn_type, **kwargs))


def tokens(length=6, batch=3, seed=1):
    return torch.randint(0, 11, (length, batch), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH"])
def test_forward_shapes_with_differing_hidden_sizes(rnn_type):
    model = tiny_model(rnn_type)
    logits, hidden = model(tokens(), model.init_hidden(3))
    assert logits.shape == (6, 3, 11)
    assert len(hidden) == 3
    for layer_hidden, size in zip(hidden, [5, 7, 3]):
        states = layer_hidden if rnn_type == "LSTM" else (layer_hidden,)
        assert len(states) == (2 if rnn_type == "LSTM" else 1)
        assert all(state.shape == (1, 3, size) for state in states)
    assert model.layer_names == ["rnns.0.l0", "rnns.1.l0", "rnns.2.l0"]
    assert "rnns.1.weight_ih_l0" in dict(model.named_parameters())


def test_hidden_state_carries_information_across_calls():
    model = tiny_model().eval()
    whole, _ = model(tokens(length=8))
    first, hidden = model(tokens(length=8)[:5])
    second, _ = model(tokens(length=8)[5:], model.detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, second]), whole)


def test_init_range_bounds_every_parameter():
    model = tiny_model(init_range=0.05)
    assert all(p.abs().max() <= 0.05 for p in model.parameters())


def test_tied_weights_share_one_matrix_and_need_matching_sizes():
    model = tiny_model(hidden_sizes=(6, 4), tie_weights=True)
    assert model.decoder.weight is model.encoder.weight
    with pytest.raises(InvalidInputError, match="tie_weights"):
        tiny_model(hidden_sizes=(6, 5), tie_weights=True)
    with pytest.raises(InvalidInputError, match="rnn_type"):
        tiny_model("CONV")


def test_presets_build_valid_configs_and_follow_the_reference_schedule():
    for name, entry in PRESETS.items():
        config = ModelConfig(vocab_size=50, **entry["model"]).validate()
        assert ModelConfig.from_dict(config.to_dict()) == config
        TrainConfig.from_preset(name).validate()
    small = TrainConfig.from_preset("ptb-small")
    # constant for four epochs, then halved each epoch
    assert [small.lr_at_epoch(e) / small.lr for e in (1, 4, 5, 6)] == [1.0, 1.0, 0.5, 0.25]
    medium = TrainConfig.from_preset("ptb-medium")
    assert medium.lr_at_epoch(6) == medium.lr and medium.lr_at_epoch(7) == pytest.approx(medium.lr / 1.2)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, rnn_type):
    model = tiny_model(rnn_type, dropout=0.3).eval()
    path = save_model(tmp_path / "model.pt", model, VOCAB, {"data_source": "synthetic:0", "epoch": 3})
    loaded, info = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert info["data_source"] == "synthetic:0" and info["epoch"] == 3 and info["vocab"] == VOCAB
    assert torch.equal(loaded(tokens())[0], model(tokens())[0])
    plain = torch.load(path, weights_only=True)
    assert set(plain["model_state"]) == set(model.state_dict())
    assert plain["model_config"]["hidden_sizes"] == [5, 7, 3]


def test_load_model_takes_a_run_directory(tmp_path):
    model = tiny_model().eval()
    save_model(tmp_path / "best.pt", model, VOCAB)
    loaded, info = load_model(tmp_path)
    assert info["path"].endswith("best.pt")
    assert torch.equal(loaded(tokens())[0], model(tokens())[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        load_model(tmp_path / "empty")


def test_save_model_refuses_objects_plain_torch_could_not_load(tmp_path):
    with pytest.raises(InvalidInputError, match="Namespace"):
        save_model(tmp_path / "model.pt", tiny_model(), VOCAB, {"args": argparse.Namespace(a=1)})
    assert not (tmp_path / "model.pt").exists()


def test_load_model_refuses_pickled_objects_and_damaged_files(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model_config": argparse.Namespace(a=1), "model_state": {}}, unsafe)
    with pytest.raises(UnsafeCheckpointError):
        load_model(unsafe)
    good = save_model(tmp_path / "good.pt", tiny_model(), VOCAB)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_model(truncated)
    not_a_model = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, not_a_model)
    with pytest.raises(CheckpointError, match="model_config"):
        load_model(not_a_model)
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing.pt")


def test_the_decoder_fast_paths_match_the_linear_layer_and_follow_weight_changes():
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=30, embedding_size=6, hidden_sizes=(5, 4))).eval()
    tokens = torch.randint(0, 30, (7, 3))

    def reference():
        output = model.encoder(tokens)
        for rnn in model.rnns:
            output = rnn(output)[0]
        return model.decoder(output)

    with torch.no_grad():
        cached, _ = model(tokens)  # bias folded into the product, [W | b] cached
    torch.testing.assert_close(cached, reference())
    trained, _ = model(tokens)  # with autograd: product, then the bias in place
    torch.testing.assert_close(trained, reference())
    trained.sum().backward()
    assert model.decoder.bias.grad is not None and model.decoder.weight.grad is not None

    torch.optim.SGD(model.parameters(), lr=0.5).step()  # changes the weights in place
    with torch.no_grad():
        after_step, _ = model(tokens)
    torch.testing.assert_close(after_step, reference())
    assert not torch.allclose(after_step, cached)

    other = RNNLanguageModel(ModelConfig(vocab_size=30, embedding_size=6, hidden_sizes=(5, 4)))
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        loaded, _ = model(tokens)
    torch.testing.assert_close(loaded, reference())
    assert "_decoder_cache" not in str(list(model.state_dict()))


def test_bfloat16_inference_precision_changes_only_gradient_free_decoding_and_only_slightly():
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=500, embedding_size=16, hidden_sizes=(32,))).eval()
    tokens = torch.randint(0, 500, (7, 3))
    with torch.no_grad():
        exact, _ = model(tokens)
    with_grad, _ = model(tokens)
    model.set_inference_precision(torch.bfloat16)
    with torch.no_grad():
        rounded, _ = model(tokens)
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
    torch.testing.assert_close(rounded, exact, atol=0.02 * exact.abs().max().item(), rtol=0.0)
    # the distillation targets (softmax at tau 2) barely move
    p, q = torch.softmax(exact / 2, -1), torch.softmax(rounded / 2, -1)
    assert (p * (p.log() - q.log())).sum(-1).max() < 1e-4
    again_with_grad, _ = model(tokens)  # a pass that needs gradients keeps float32
    assert torch.equal(again_with_grad, with_grad)
    assert copy.deepcopy(model).__dict__["_inference_dtype"] == torch.bfloat16
    assert set(model.state_dict()) == set(RNNLanguageModel(model.config).state_dict())
    model.set_inference_precision(torch.float32)
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], exact)
    with pytest.raises(InvalidInputError, match="bfloat16"):
        model.set_inference_precision(torch.float16)
