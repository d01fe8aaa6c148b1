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
