"""Names a model controls, built to break a terminal, markdown, XML or GitHub's workflow commands, and the
checks that a rendered output shows them safely. Shared by tests/report and tests/cli."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipcheck.report.text import needs_escape

ANSI = "\x1b[31mRED\x1b[0m"
HOSTILE = (
    ANSI,
    "a\nb",
    "c\rd",
    "[bold]x[/bold]",
    "[link=http://x]y[/link]",
    "\u202eevil",
    "</testcase><x>",
    "%0A",
    "::error::",
    "p|q`r`",
    "$\\alpha$",
    "[click](http://x)",
    "\x07\x00\x7f\x9b\u2028",
)

# the Gemm layers' names: every hostile fragment appears in a layer name (the table's first column)
LAYER_1 = "fc" + ANSI + "a\nb" + "c\rd" + "\u202eevil" + "\t"
LAYER_2 = "[bold]x[/bold]" + "[link=http://x]y[/link]" + "</testcase><x>" + "%0A" + "::error::" + "p|q`r`"
LAYER_3 = "$\\alpha$" + "[click](http://x)" + "\x07\x00\x7f\x9b\u2028" + "\x1b]8;;http://x\x1b\\"
RELU = "relu[red]\x1b[2J"
PRODUCT = "mul\x1b[31m|x\n::warning::%"  # x·x: unbounded, quoted in the reason and the gate's messages
FILE_NAME = "ev\x1b[31mil\n|[b].onnx"
INPUT = "in\x1b[2Jput"


def hostile_model() -> onnx.ModelProto:
    """x → Gemm → Relu → Gemm → Gemm → Mul(h, h): three layers and one unbounded node, every name hostile."""
    rng = np.random.default_rng(0)
    weights = {
        "W1\x1b[1m": rng.standard_normal((4, 4)).astype(np.float32),
        "W2</x>": rng.standard_normal((4, 4)).astype(np.float32),
        "W3\u202e": rng.standard_normal((3, 4)).astype(np.float32),
    }
    w1, w2, w3 = weights
    nodes = [
        helper.make_node("Gemm", [INPUT, w1], ["h1\u202e"], name=LAYER_1, transB=1),
        helper.make_node("Relu", ["h1\u202e"], ["h2[bold]"], name=RELU),
        helper.make_node("Gemm", ["h2[bold]", w2], ["h3\n"], name=LAYER_2, transB=1),
        helper.make_node("Gemm", ["h3\n", w3], ["h4"], name=LAYER_3, transB=1),
        helper.make_node("Mul", ["h4", "h4"], ["out"], name=PRODUCT),
    ]
    graph = helper.make_graph(
        nodes,
        "g\x1b[5m\u202e[red]G[/red]",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save_hostile_model(folder: Path) -> Path:
    path = folder / FILE_NAME
    onnx.save(hostile_model(), str(path))
    return path


# ------------------------------------------------------------------------------------------- checks


def assert_no_control(text: str, layout: str = "\n") -> None:
    """No control, bidi or other invisible character in ``text`` but the layout ones."""
    bad = sorted({c for c in text if needs_escape(c) and c not in layout})
    assert not bad, f"raw characters in the output: {[hex(ord(c)) for c in bad]}"


def markdown_cells(line: str) -> int:
    """The number of cells of a markdown table row: GFM splits at every ``|`` not preceded by a backslash."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def _tags(html: str) -> set[str]:
    return {name.lower() for name in re.findall(r"</?([A-Za-z][\w-]*)", html)}


def assert_markdown_safe(markdown: str, allowed_tags: frozenset[str] = frozenset({"sub", "details", "summary"})
                         ) -> None:
    """One line per table row with the header's number of cells; parsed (markdown-it, GFM tables): no link,
    image or autolink, no HTML but the renderer's own tags; no ``$`` math outside code spans."""
    from markdown_it import MarkdownIt

    assert_no_control(markdown)
    header_cells = None
    for line in markdown.splitlines():
        if line.startswith("|"):
            if header_cells is None:
                header_cells = markdown_cells(line)
            assert markdown_cells(line) == header_cells, line
        else:
            header_cells = None
        without_code = re.sub(r"(?<!\\)`[^`]*`", "", line)
        assert not re.search(r"(?<!\\)\$", without_code.replace("\\\\", "")), line  # GitHub math

    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").parse(markdown)
    flat = [t for token in tokens for t in (token, *(token.children or []))]
    assert not [t for t in flat if t.type in ("link_open", "image")], "a name made a link"
    for token in flat:
        if token.type in ("html_inline", "html_block"):
            assert _tags(token.content) <= allowed_tags, token.content
    cells_per_row = []
    for token in tokens:
        if token.type == "tr_open":
            cells_per_row.append(0)
        elif token.type in ("th_open", "td_open"):
            cells_per_row[-1] += 1
        elif token.type == "table_close":
            assert len(set(cells_per_row)) == 1, cells_per_row
            cells_per_row = []


WORKFLOW_COMMAND = re.compile(r"^::(error|warning) file=[^,:\r\n]*,title=[^,:\r\n]*::[^\r\n]+$")


def assert_github_safe(text: str, annotations: int) -> None:
    assert_no_control(text)
    lines = text.splitlines()
    assert len(lines) == annotations
    for line in lines:
        assert WORKFLOW_COMMAND.match(line), line


def assert_junit_safe(text: str) -> ET.Element:
    assert_no_control(text)
    return ET.fromstring(text.split("\n", 1)[1])  # after the XML declaration
