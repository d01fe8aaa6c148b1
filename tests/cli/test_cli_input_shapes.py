"""``--input-shape`` parsing: a pure function, no model needed."""

from __future__ import annotations

import pytest

from lipcheck.cli.app import parse_input_shapes, parse_shape
from lipcheck.errors import InputShapeError, LipcheckError


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1,3,32,32", (1, 3, 32, 32)),
        (" 1, 3 ,32,32 ", (1, 3, 32, 32)),
        ("1x3x32x32", (1, 3, 32, 32)),
        ("[1, 3, 32, 32]", (1, 3, 32, 32)),
        ("(8,)", (8,)),
        ("784", (784,)),
    ],
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,,3", "1,a", "1,-3", "1,0,4", "1.5,2", "abc", "1;3"])
def test_parse_shape_rejects(text: str) -> None:
    with pytest.raises(InputShapeError, match="--input-shape"):
        parse_shape(text)


def test_no_values() -> None:
    assert parse_input_shapes([]) is None


def test_one_bare_shape_is_a_tuple() -> None:
    assert parse_input_shapes(["1,3,32,32"]) == (1, 3, 32, 32)


def test_named_shapes_are_a_dict() -> None:
    assert parse_input_shapes(["image=1,3,32,32", "meta=1,4"]) == {"image": (1, 3, 32, 32), "meta": (1, 4)}
    assert parse_input_shapes(["x=1,4"]) == {"x": (1, 4)}


def test_name_may_contain_equals() -> None:
    assert parse_input_shapes(["a=b=1,2"]) == {"a=b": (1, 2)}


@pytest.mark.parametrize(
    "values",
    [
        ["1,3", "1,4"],  # several bare shapes
        ["x=1,3", "1,4"],  # mixed
        ["=1,3"],  # empty name
        ["x=1,3", "x=1,4"],  # duplicate
        ["x=1,a"],  # bad shape
    ],
)
def test_bad_values_raise_one_typed_error(values: list[str]) -> None:
    with pytest.raises(InputShapeError) as info:
        parse_input_shapes(values)
    assert isinstance(info.value, LipcheckError)
    assert "\n" not in str(info.value)
