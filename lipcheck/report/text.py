"""Display escaping for text a model controls: node, tensor, parameter and file names, op types, and the
messages that quote them.

A name in an ONNX or PyTorch file can hold any character. Shown raw, an ANSI escape (``\\x1b[31m``)
recolours or clears the terminal, a newline or carriage return forges a line of the summary or of a GitHub
annotation, a bidi override (U+202E) reverses what is read, and most C0 characters make XML 1.0 invalid.

- :func:`safe_text` is the one escaping every human-facing format applies (table, markdown, GitHub
  annotations, JUnit XML, the stderr summary, one-line errors, progress labels, plot labels): each such
  character becomes a visible, ``repr``-style escape (``\\x1b``, ``\\n``, ``\\u202e``). The result is
  printable, one line, valid XML 1.0 text, and escaping it again changes nothing. Backslashes are kept as
  they are (Windows paths stay readable), so a name that spells ``\\x1b`` literally prints the same as an
  escaped ESC: the display is safe, not reversible. JSON keeps the exact names (``json.dumps`` escapes).
- :func:`markdown_text` escapes for a GitHub-flavoured markdown table cell or list item: a name cannot add
  a column, a line, HTML, a code span, a math expression or a link.
- :func:`html_text` escapes for raw HTML inside markdown (``<summary>...</summary>``).

Rich markup (``[bold]``, ``[link=...]``) is avoided rather than escaped: the Rich renderers build
:class:`rich.text.Text` objects, which Rich never parses as markup or emoji codes.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = ["html_text", "markdown_text", "needs_escape", "safe_text"]

# Categories escaped: Cc (C0, DEL, C1), Cf (bidi embeddings/overrides/isolates, zero-width characters, BOM,
# soft hyphen), Zl and Zp (U+2028/U+2029, line breaks to some terminals and editors), Cs (lone surrogates:
# not encodable as UTF-8).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _is_noncharacter(code: int) -> bool:
    """U+FDD0..U+FDEF and U+xxFFFE/U+xxFFFF: not allowed in XML 1.0 (U+FFFE, U+FFFF), never text."""
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def needs_escape(char: str) -> bool:
    """Whether :func:`safe_text` replaces ``char`` (one character)."""
    return unicodedata.category(char) in _ESCAPED_CATEGORIES or _is_noncharacter(ord(char))


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(text: object) -> str:
    """``text`` with every control, format (bidi, zero-width), line/paragraph separator, surrogate and
    noncharacter code point replaced by a visible escape such as ``\\x1b``, ``\\n`` or ``\\u202e``.

    Guarantees: the result is one line, contains no such code point (so no ANSI sequence can start and it
    is valid XML 1.0 character data), and ``safe_text(safe_text(s)) == safe_text(s)``.
    """
    text = str(text)
    if text.isprintable() and text.isascii():  # the common case, fast
        return text
    return "".join(_escape(c) if needs_escape(c) else c for c in text)


_MARKDOWN = str.maketrans({
    "\\": "\\\\",  # a name's own backslashes, so that they escape nothing
    "|": "\\|",  # a new column
    "`": "\\`",  # a code span
    "&": "&amp;",  # an entity
    "<": "&lt;",  # HTML tags, autolinks (a lone ">" is plain text)
    "$": "\\$",  # GitHub's math ($\\alpha$)
})
_LINK = re.compile(r"\](?=[(\[])")  # ](url) and ][ref]: without the bracket, no link or image


def markdown_text(text: object) -> str:
    """``text`` for a GitHub-flavoured markdown table cell or list item: :func:`safe_text` (one line, no
    control characters), then backslash, ``|``, backtick, ``&``, ``<``, ``$`` (math) and link brackets escaped.
    Emphasis characters (``*``, ``_``) are left alone: they can restyle a name, not break the document."""
    return _LINK.sub(r"\\]", safe_text(text).translate(_MARKDOWN))


def html_text(text: object) -> str:
    """``text`` inside raw HTML (a ``<summary>``): :func:`safe_text`, then ``&``, ``<``, ``>``, quotes and
    ``$`` (GitHub's math) as character references."""
    return html.escape(safe_text(text), quote=True).replace("$", "&#36;")
