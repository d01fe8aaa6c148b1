"""The torch writer reads a TorchScript archive the way the loader does (:func:`load_torchscript`): without
``trust_pickle`` code with effects outside the model is refused before any of it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lipcheck.errors import LoadError
from lipcheck.loaders import TorchOptions
from lipcheck.normalize.torch_writer import write_scaled_torch


class _Printing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("payload")
        return self.fc(x)


@pytest.fixture
def printing_archive(tmp_path: Path) -> Path:
    path = tmp_path / "printing.ts.pt"
    torch.jit.save(torch.jit.script(_Printing()), str(path), _extra_files={"notes.txt": "kept"})
    return path


def test_untrusted_archive_with_side_effects_is_refused(printing_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ts.pt"
    with pytest.raises(LoadError, match=r"prim::Print.*--trust-pickle"):
        write_scaled_torch(printing_archive, out, {"fc.weight": 0.5}, TorchOptions())
    assert not out.exists()


def test_trusted_archive_is_written_with_its_extra_files(printing_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ts.pt"
    [written] = write_scaled_torch(printing_archive, out, {"fc.weight": 0.5}, TorchOptions(trust_pickle=True))
    assert written.param == "fc.weight"
    extra = {"notes.txt": ""}
    scaled = torch.jit.load(str(out), _extra_files=extra)
    original = torch.jit.load(str(printing_archive))
    assert torch.equal(scaled.fc.weight, original.fc.weight * 0.5)
    assert extra == {"notes.txt": b"kept"}
