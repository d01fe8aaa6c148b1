"""Trust in a model file never comes from the configuration under review (a pull request could add
``trust-pickle = true`` next to a model that runs code): refused in the file, ignored in a hand-built Config."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipcheck.gate.config import Config, ConfigError, ModelEntry, ModelOptions, load_config
from lipcheck.gate.run import resolve_targets


@pytest.mark.parametrize("where", ["top", "model"])
@pytest.mark.parametrize("name", ["pyproject.toml", "lipcheck.toml"])
def test_trust_pickle_true_is_refused(tmp_path: Path, where: str, name: str) -> None:
    table = "[tool.lipcheck]\n" if name == "pyproject.toml" else ""
    models = "[[tool.lipcheck.models]]\n" if name == "pyproject.toml" else "[[models]]\n"
    if where == "top":
        text = f'{table}trust-pickle = true\n{models}path = "m.pt"\n'
    else:
        text = f'{table}{models}path = "m.pt"\ntrust-pickle = true\n'
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    message = str(info.value)
    assert message.startswith(name) and "trust-pickle" in message
    assert "--trust-pickle" in message and "LIPCHECK_TRUST_PICKLE=1" in message and "\n" not in message


def test_trust_pickle_false_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "lipcheck.toml").write_text('trust-pickle = false\nmodels = ["m.pt"]\n', encoding="utf-8")
    config = load_config(cwd=tmp_path)
    [target] = resolve_targets([], config, ModelOptions())
    assert target.analysis.trust_pickle is False


def test_trust_comes_from_the_flags_only() -> None:
    trusting = ModelOptions(trust_pickle=True)
    config = Config(file="x.toml", defaults=trusting, models=(ModelEntry("m.pt", "m.pt", trusting),))
    for models in ([], ["m.pt"], ["other.pt"]):
        [target] = resolve_targets(models, config, ModelOptions())
        assert target.analysis.trust_pickle is False
        [target] = resolve_targets(models, config, ModelOptions(trust_pickle=True))
        assert target.analysis.trust_pickle is True


# ----------------------------------------------------------------------------- arch from the configuration
# ``arch = "file.py:factory"`` imports and runs a Python file of the repository under review: a pull request
# could add a state dict and the factory next to it. Used only with --trust-pickle / LIPCHECK_TRUST_PICKLE=1;
# ``--arch`` on the command line is the user's own choice.


@pytest.mark.parametrize("where", ["top", "model"])
def test_config_arch_needs_trust(tmp_path: Path, where: str) -> None:
    arch = 'arch = "nets.py:build"\n'
    text = f'{arch}[[models]]\npath = "m.pt"\n' if where == "top" else f'[[models]]\npath = "m.pt"\n{arch}'
    (tmp_path / "lipcheck.toml").write_text(text, encoding="utf-8")
    config = load_config(cwd=tmp_path)
    for models in ([], ["m.pt"]):
        with pytest.raises(ConfigError) as info:
            resolve_targets(models, config, ModelOptions())
        message = str(info.value)
        assert message.startswith("lipcheck.toml: arch = 'nets.py:build'") and "\n" not in message
        assert "--trust-pickle" in message and "LIPCHECK_TRUST_PICKLE=1" in message and "--arch" in message
    [target] = resolve_targets([], config, ModelOptions(trust_pickle=True))
    assert target.analysis.arch == "nets.py:build" and target.analysis.trust_pickle is True
    # the user's own --arch replaces the configured one: nothing from the configuration is imported
    [target] = resolve_targets([], config, ModelOptions(arch="mine.py:build"))
    assert target.analysis.arch == "mine.py:build" and target.analysis.trust_pickle is False


def test_config_without_arch_needs_no_trust(tmp_path: Path) -> None:
    (tmp_path / "lipcheck.toml").write_text('arch-kwargs = {n = 3}\nmodels = ["m.onnx"]\n', encoding="utf-8")
    [target] = resolve_targets([], load_config(cwd=tmp_path), ModelOptions())
    assert target.analysis.arch is None and target.analysis.arch_kwargs == {"n": 3}


_ARCH_FILE = '''
from pathlib import Path

from torch import nn

Path("imported.txt").write_text("the factory file ran")


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
'''


@pytest.fixture
def state_dict_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checked repository: a state dict, the factory file (which leaves imported.txt when imported) and a
    configuration that names it."""
    import os

    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "nets.py").write_text(_ARCH_FILE, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.lipcheck]\n[[tool.lipcheck.models]]\npath = "m.pt"\narch = "nets.py:build"\ninput-shape = [1, 4]\n',
        encoding="utf-8")
    for name in list(os.environ):
        if name.startswith("LIPCHECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    from typer.testing import CliRunner

    from lipcheck.cli.app import app

    result = CliRunner().invoke(app, ["check", "--no-exact", *args], env=env)
    return result.exit_code, result.stderr


def test_check_refuses_config_arch_without_trust(state_dict_repo: Path) -> None:
    code, stderr = _check()
    assert code == 2, stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("error: pyproject.toml: arch = 'nets.py:build' (model m.pt)")
    assert "--trust-pickle" in line and "LIPCHECK_TRUST_PICKLE=1" in line
    assert not (state_dict_repo / "imported.txt").exists()  # nothing of the repository ran


@pytest.mark.parametrize("how", ["env", "flag"])
def test_check_uses_config_arch_with_trust(state_dict_repo: Path, how: str) -> None:
    code, stderr = _check("--trust-pickle") if how == "flag" else _check(env={"LIPCHECK_TRUST_PICKLE": "1"})
    assert code == 0, stderr
    assert (state_dict_repo / "imported.txt").exists()


def test_check_with_arch_on_the_command_line_needs_no_trust(state_dict_repo: Path) -> None:
    (state_dict_repo / "mine.py").write_text(_ARCH_FILE.replace("imported.txt", "mine.txt"), encoding="utf-8")
    code, stderr = _check("--arch", "mine.py:build")
    assert code == 0, stderr
    assert (state_dict_repo / "mine.txt").exists() and not (state_dict_repo / "imported.txt").exists()
