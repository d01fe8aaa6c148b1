"""``[tool.lipcheck]`` / ``lipcheck.toml``: discovery, validation (errors name the file and the key), precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lipcheck.gate.config import ConfigError, ModelOptions, find_config, load_config

PYPROJECT = """
[project]
name = "demo"

[tool.lipcheck]
max-lipschitz = 10.0
max-layer-sigma = 4
input-shape = [1, 3, 32, 32]

[[tool.lipcheck.models]]
path = "models/a.onnx"
max-lipschitz = 50
baseline = "baselines/a.json"
max-increase = 2.5

[[tool.lipcheck.models]]
path = "models/b.pt"
name = "b-model"
input-shape = {x = [1, 16], y = "1x8"}
arch = "arch/nets.py:make"
arch-kwargs = {width = 4}
key = "model_state_dict"
exact = false
lower-bound = true
lower-bound-seconds = 1.5
power-iterations = 50
tolerance = 1e-4
seed = 3
exact-limit = 1000
tight-work = 0
allow-uncertified = true
trust-pickle = false
plot = "plots/b.png"
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str, name: str = "pyproject.toml") -> str:
    _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    return str(info.value)


def test_full_config(tmp_path: Path) -> None:
    _write(tmp_path, "pyproject.toml", PYPROJECT)
    config = load_config(cwd=tmp_path)
    assert config.file == "pyproject.toml"
    assert config.defaults == ModelOptions(max_lipschitz=10.0, max_layer_sigma=4.0, input_shape=(1, 3, 32, 32))
    a, b = config.models
    assert (a.path, a.name) == (os.path.join("models", "a.onnx"), os.path.join("models", "a.onnx"))
    assert a.options.max_lipschitz == 50.0 and a.options.max_layer_sigma == 4.0  # model over defaults
    assert a.options.input_shape == (1, 3, 32, 32)
    assert a.options.baseline == os.path.join("baselines", "a.json") and a.options.max_increase == 2.5
    assert b.name == "b-model"
    assert b.options.input_shape == {"x": (1, 16), "y": (1, 8)}
    assert b.options.arch == os.path.join("arch", "nets.py") + ":make"
    assert b.options.arch_kwargs == {"width": 4}
    assert (b.options.exact, b.options.lower_bound, b.options.lower_bound_seconds) == (False, True, 1.5)
    options = b.options
    assert (options.power_iterations, options.tolerance, options.seed, options.exact_limit) == (50, 1e-4, 3, 1000)
    assert options.tight_work == 0.0 and a.options.tight_work is None
    assert b.options.allow_uncertified is True and b.options.trust_pickle is False
    assert b.options.plot == os.path.join("plots", "b.png")
    assert config.entry_for(os.path.join("models", ".", "a.onnx")) == a
    assert config.entry_for("other.onnx") is None


def test_found_from_a_subfolder_and_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    _write(tmp_path, "pyproject.toml", PYPROJECT)
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    assert find_config(sub) == (tmp_path / "pyproject.toml").resolve()
    config = load_config(cwd=sub)
    assert config.file == str((tmp_path / "pyproject.toml").resolve())  # outside the cwd: absolute
    assert Path(config.models[0].path) == (tmp_path / "models" / "a.onnx").resolve()


def test_lipcheck_toml_first_and_pyproject_without_table_skipped(tmp_path: Path) -> None:
    _write(tmp_path, "pyproject.toml", "[tool.lipcheck]\nmax-lipschitz = 1.0\n")
    inner = tmp_path / "inner"
    _write(inner, "pyproject.toml", "[project]\nname = 'x'\n")  # no [tool.lipcheck]: keep walking up
    assert find_config(inner) == (tmp_path / "pyproject.toml").resolve()
    _write(inner, "lipcheck.toml", "max-lipschitz = 2.0\nmodels = ['m.onnx']\n")
    config = load_config(cwd=inner)
    assert config.file == "lipcheck.toml"
    assert config.defaults.max_lipschitz == 2.0 and config.models[0].path == "m.onnx"


def test_no_config_at_all(tmp_path: Path) -> None:
    config = load_config(cwd=tmp_path)
    assert config.file is None and config.models == () and config.defaults == ModelOptions()


def test_explicit_config_file(tmp_path: Path) -> None:
    _write(tmp_path / "ci", "gate.toml", "max-layer-sigma = 3.0\n[[models]]\npath = '../m.onnx'\n")
    config = load_config("ci/gate.toml", cwd=tmp_path)
    assert config.defaults.max_layer_sigma == 3.0 and config.models[0].path == "m.onnx"
    with pytest.raises(ConfigError, match="config file nope.toml not found"):
        load_config("nope.toml", cwd=tmp_path)
    _write(tmp_path, "pyproject.toml", "[project]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml: no \[tool.lipcheck\] table"):
        load_config("pyproject.toml", cwd=tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[tool.lipcheck]\nmax_lipschitz = 1\n",
         "pyproject.toml: tool.lipcheck.max_lipschitz: unknown key (did you mean 'max-lipschitz'?)"),
        ("[tool.lipcheck]\nmax-lipschitz = 'ten'\n",
         "pyproject.toml: tool.lipcheck.max-lipschitz: expected a number, got a string ('ten')"),
        ("[tool.lipcheck]\nmax-lipschitz = true\n",
         "pyproject.toml: tool.lipcheck.max-lipschitz: expected a number, got a boolean (True)"),
        ("[tool.lipcheck]\nmax-lipschitz = 0\n", "pyproject.toml: tool.lipcheck.max-lipschitz: must be > 0, got 0"),
        ("[tool.lipcheck]\nmax-increase = -1\n", "pyproject.toml: tool.lipcheck.max-increase: must be ≥ 0, got -1"),
        ("[tool.lipcheck]\ntight-work = -5\n", "pyproject.toml: tool.lipcheck.tight-work: must be ≥ 0, got -5"),
        ("[tool.lipcheck]\nmax-lipschitz = nan\n", "tool.lipcheck.max-lipschitz: expected a finite number"),
        ("[tool.lipcheck]\nexact = 'no'\n", "tool.lipcheck.exact: expected true or false, got a string ('no')"),
        ("[tool.lipcheck]\npower-iterations = 1.5\n", "tool.lipcheck.power-iterations: expected an integer"),
        ("[tool.lipcheck]\nbaseline = 'b.json'\n", "tool.lipcheck.baseline: 'baseline' is set per model"),
        ("[tool.lipcheck]\nmodels = 'a.onnx'\n", "tool.lipcheck.models: expected an array of tables"),
        ("[[tool.lipcheck.models]]\nname = 'a'\n", "tool.lipcheck.models[0]: missing key 'path'"),
        ("[[tool.lipcheck.models]]\npath = 'a.onnx'\n[[tool.lipcheck.models]]\npath = './a.onnx'\n",
         "tool.lipcheck.models[1].path: a.onnx is configured twice (also models[0])"),
        ("[[tool.lipcheck.models]]\npath = 'a.onnx'\ninput-shape = [1, 0]\n",
         "tool.lipcheck.models[0].input-shape: every dimension must be a positive integer"),
        ("[[tool.lipcheck.models]]\npath = 'a.onnx'\ninput-shape = {x = 'abc'}\n",
         "tool.lipcheck.models[0].input-shape.x: expected a shape"),
        ("[[tool.lipcheck.models]]\npath = 'a.onnx'\narch = 'nocolon'\n",
         "tool.lipcheck.models[0].arch: expected package.module:factory"),
        ("[[tool.lipcheck.models]]\npath = 'a.onnx'\nmax-layer-sigmaa = 2\n",
         "tool.lipcheck.models[0].max-layer-sigmaa: unknown key (did you mean 'max-layer-sigma'?)"),
        ("[tool.lipcheck]\nmodels = [{path = 'a.onnx', name = 'x'}, {path = 'b.onnx', name = 'x'}]\n",
         "tool.lipcheck.models: model name 'x' is used twice"),
        ("[tool.lipcheck]\nmax-lipschitz = \n", "pyproject.toml: invalid TOML: "),
        ("[tool]\nlipcheck = 3\n", "pyproject.toml: tool.lipcheck: expected a table, got a number"),
        ("[tool.lipcheck]\nmethod = 'sdp'\n",
         "pyproject.toml: tool.lipcheck.method: expected one of 'auto', 'product', 'lipsdp', 'blocks', got 'sdp'"),
        ("[tool.lipcheck]\nmethod = 1\n", "tool.lipcheck.method: expected one of 'auto', 'product', 'lipsdp', 'blocks', got 1"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_lipcheck_toml_keys_go_at_the_top_level(tmp_path: Path) -> None:
    message = _error(tmp_path, "[tool.lipcheck]\nmax-lipschitz = 1\n", name="lipcheck.toml")
    assert message == "lipcheck.toml: tool: in lipcheck.toml the keys go at the top level, without [tool.lipcheck]"
    assert _error(tmp_path / "x", "max-lipschitz = 1\nfoo = 2\n", name="lipcheck.toml").startswith(
        "lipcheck.toml: foo: unknown key; known keys: models, input-shape, max-lipschitz"
    )


def test_merged_overrides_only_what_is_set() -> None:
    base = ModelOptions(max_lipschitz=1.0, seed=3, exact=False)
    assert base.merged(ModelOptions(max_lipschitz=2.0)) == ModelOptions(max_lipschitz=2.0, seed=3, exact=False)
    assert base.merged(ModelOptions()) == base


def test_method_key_top_level_and_per_model_reaches_the_analysis(tmp_path: Path) -> None:
    from lipcheck.gate.run import resolve_targets

    _write(tmp_path, "pyproject.toml", "[tool.lipcheck]\nmethod = 'Product'\n"
           "[[tool.lipcheck.models]]\npath = 'a.onnx'\n"
           "[[tool.lipcheck.models]]\npath = 'b.onnx'\nmethod = 'lipsdp'\n")
    config = load_config(cwd=tmp_path)
    assert config.defaults.method == "product"
    assert [m.options.method for m in config.models] == ["product", "lipsdp"]
    targets = resolve_targets([], config, ModelOptions())
    assert [t.analysis.kwargs()["method"] for t in targets] == ["product", "lipsdp"]
    flagged = resolve_targets([], config, ModelOptions(method="auto"))  # --method overrides the file
    assert {t.analysis.method for t in flagged} == {"auto"}


@pytest.mark.parametrize(("value", "expected"),
                         [("2", 2), ('"auto"', 0), ('"size"', "size"), ('"Size"', "size")])
def test_jobs_values(tmp_path: Path, value: str, expected: int | str) -> None:
    _write(tmp_path, "lipcheck.toml", f"jobs = {value}\n")
    assert load_config(cwd=tmp_path).defaults.jobs == expected


def test_bad_jobs_value(tmp_path: Path) -> None:
    assert '"size"' in _error(tmp_path, "jobs = \"many\"\n", name="lipcheck.toml")
