"""load_checkpoint: plain and wrapped state dicts, DDP prefixes, safetensors, clear mismatches."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from landscape import LandscapeError, load_checkpoint
from landscape.data import digits_cnn, digits_mlp


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "model_state_dict", "ddp"])
def test_loads_plain_and_wrapped_state_dicts(tmp_path, wrap):
    source = digits_mlp(seed=1)
    state = source.state_dict()
    if wrap == "ddp":
        state = {"module." + k: v for k, v in state.items()}
    elif wrap is not None:
        state = {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    target = load_checkpoint(digits_mlp(seed=2), path)
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    # a dict in memory works too
    assert load_checkpoint(digits_mlp(seed=3), state) is not None


def test_loads_safetensors_with_buffers(tmp_path):
    source = digits_cnn(seed=1)
    source[1].running_mean.fill_(0.5)
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = load_checkpoint(digits_cnn(seed=2), path)
    assert torch.equal(target[1].running_mean, source[1].running_mean)


def test_mismatch_lists_missing_unexpected_and_shapes():
    state = digits_mlp(hidden=16).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["0.bias"]
    with pytest.raises(LandscapeError) as info:
        load_checkpoint(digits_mlp(hidden=32), state)
    msg = str(info.value)
    assert "missing keys [0.bias]" in msg
    assert "unexpected keys [extra.weight]" in msg
    assert "0.weight: checkpoint (16, 64) vs model (32, 64)" in msg


def test_bad_files(tmp_path):
    with pytest.raises(LandscapeError, match="does not exist"):
        load_checkpoint(digits_mlp(), tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(LandscapeError, match="not a readable PyTorch file"):
        load_checkpoint(digits_mlp(), bad)
    with pytest.raises(LandscapeError, match=r"is a folder; give a checkpoint file"):
        load_checkpoint(digits_mlp(), tmp_path)
    torch.save(digits_mlp(), tmp_path / "whole.pt")
    with pytest.raises(LandscapeError, match=r"pickled Python objects .* save a state dict"):
        load_checkpoint(digits_mlp(), tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    with pytest.raises(LandscapeError, match=r"not a readable PyTorch file \(\w[^)]*[^.]\): "):
        load_checkpoint(digits_mlp(), tmp_path / "cut.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(LandscapeError, match="not tensors"):
        load_checkpoint(digits_mlp(), tmp_path / "odd.pt")
