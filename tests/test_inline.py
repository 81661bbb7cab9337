"""Inline expressions in Markdown cells, found as jupyterlab-myst finds them (report/execution.py
follows markdown-it-myst's role pattern, as installed with jupyterlab-myst): a role's body sits
between two runs of the same number of backticks, so ``{eval}``"`"`` holds the expression "`";
nothing in fenced code, a code span or $math$ is a role, nor anything after a backslash. An {eval}
that is not a role, or a role the report cannot render, is refused naming it. Fast: no kernel."""

import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "report"))

from execution import roles  # noqa: E402
from export import ReportError, substitute_inline  # noqa: E402


def bodies(source: str) -> list[str]:
    return [role.body for role in roles(source)]


# (Markdown, the expressions of its roles): the browser test (test_lab_browser) checks that
# jupyterlab-myst evaluates exactly these
FOUND = [
    ("a {eval}`x` b", ["x"]),
    ('a {eval}``"`"`` b', ['"`"']),  # the input: a backtick inside the expression
    ("a {eval}```x``` b", ["x"]),
    ("a {eval}`` `x` `` b", [" `x` "]),  # the body as written: no spaces stripped
    ("{ eval }`x` and {eval .cls}`y`", ["x", "y"]),  # spaces and options in the braces
    ("over {eval}`a +\nb` lines", ["a +\nb"]),
    ("code `{eval}`x`` and then {eval}`y`", ["y"]),
    ("code `` {eval}`x` `` only", []),
    ("math $a {eval}`x`$, $$ {eval}`z` $$ and {eval}`w`", ["w"]),
    ("a lone $5 and {eval}`x`", ["x"]),
    ("escaped \\{eval}`x`, \\\\{eval}`q` and {eval}`v`", ["v"]),
    ("```\n{eval}`in code`\n```\n{eval}`after`", ["after"]),
    ("~~~~python\n{eval}`in code`\n~~~\n~~~~\n{eval}`after`", ["after"]),
    ("```{note}\n{eval}`in a directive`\n```", ["in a directive"]),
]


@pytest.mark.parametrize("source, expected", FOUND)
def test_roles_are_found_where_jupyterlab_myst_finds_them(source, expected):
    assert bodies(source) == expected


def test_a_role_keeps_its_place_in_the_text():
    source = 'One {eval}``"`"`` two {eval}`x` three'
    first, second = roles(source)
    assert source[first.start : first.end] == '{eval}``"`"``' and first.name == "eval"
    assert source[second.start : second.end] == "{eval}`x`"


@pytest.mark.parametrize(
    "source, message",
    [
        ("an {eval}`unclosed one", "'{eval}`unclosed one' holds an {eval} that is not a role"),
        ("an {eval} `x` with a space", "'{eval} `x` with a space' holds an {eval} that is not"),
        ("para {eval}`a\n\nb` split", "'{eval}`a' holds an {eval} that is not a role"),
        ("{sub}`2`", "'{sub}`2`' is a {sub} role, which the report would print as typed"),
    ],
)
def test_what_the_report_cannot_render_is_named(source, message):
    with pytest.raises(ValueError) as refused:
        roles(source)
    assert str(refused.value).startswith(message)


def _evaluated(source: str, values: dict[str, str]):
    cell = nbformat.v4.new_markdown_cell(source)
    cell.metadata["user_expressions"] = [
        {"expression": e, "result": {"status": "ok", "data": {"text/plain": v}}}
        for e, v in values.items()
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells.append(cell)
    return nb


def test_the_export_puts_each_value_in_place_of_its_role():
    nb = _evaluated('A {eval}``"`"`` and {eval}`x`, `{eval}`y`` stays.', {'"`"': "'`'", "x": "2.5"})
    substitute_inline(nb, "task9_tiny")
    assert nb.cells[0].source == "A \\` and 2.5, `{eval}`y`` stays."


def test_the_export_names_a_role_without_a_value_or_an_eval_that_is_not_one():
    with pytest.raises(ReportError, match=r"^task9_tiny\.ipynb, cell 1: no value for {eval}``x``"):
        substitute_inline(_evaluated("A {eval}``x``.", {}), "task9_tiny")
    with pytest.raises(ReportError, match=r"^task9_tiny\.ipynb, cell 1: '{eval}`x' holds an"):
        substitute_inline(_evaluated("A {eval}`x", {}), "task9_tiny")
