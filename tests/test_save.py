"""Weights files are readable as the umask says, written whole or not at all; checkpoints are
read without running pickled code."""

import os
import stat

import pytest
import torch

from lmm.core.save import save_weights


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_weights_follow_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        path = save_weights(torch.nn.Linear(2, 2), tmp_path / "final.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode  # safetensors alone writes 0600
    assert not list(tmp_path.glob("*.partial"))


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_consolidating_a_checkpoint_never_runs_pickled_code(tmp_path):
    from lmm.commands.consolidate import model_state

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "trap": Exploit(marker)}, checkpoint)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        model_state(checkpoint)
    assert not marker.exists()
