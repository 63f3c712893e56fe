"""Resource bombs in untrusted pack templates fail validation with a clear error naming the file.

Each attack used to raise a traceback (MemoryError, ValueError) or hang; now it must be
refused quickly by the size checks or the work budget in policyalign/templates.py. The work
budget is lowered here so the budget cases stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broken_packs import norm
from policyalign import templates
from policyalign.cli import app
from policyalign.errors import PackError
from policyalign.pack import load_pack
from policyalign.registry import Registry

FILE = "templates/plain.jinja"
TOO_BIG = "template would build"
TOO_MUCH_WORK = "template does too much work"
LOOPS3 = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}\n"

ATTACKS = [
    ("string-repeat", '{{ "a" * 10000000000 }}\n', TOO_BIG),
    ("list-repeat", "{{ seeds * 100000000 }}\n", TOO_BIG),
    ("center-width", '{{ "x"|center(1000000000) }}\n', TOO_BIG),
    ("indent-width", '{{ "x\ny"|indent(1000000000) }}\n', TOO_BIG),
    ("replace-growth", '{% set b = "x" * 1000 %}{{ b|replace("x", b)|replace("x", b) }}\n', TOO_BIG),
    ("join-growth", '{% set b = "x" * 100000 %}{{ [b, b, b, b, b, b, b, b]|join }}\n', TOO_BIG),
    ("printf-width", '{{ "%0999999999d" % 1 }}\n', "format width"),
    ("format-filter-width", '{{ "%0999999999d"|format(1) }}\n', "format width"),
    ("lazy-map-growth", '{{ ([0] * 66000)|map("string")|map("center", 199990)|list|length }}\n', TOO_BIG),
    ("tojson-indent", '{{ ([0] * 60000)|tojson(indent=199990) }}\n', "build an indented JSON text of"),
    ("tojson-indent-depth", '{% set ns = namespace(x=[]) %}{% for i in range(900) %}{% set ns.x = [ns.x] %}{% endfor %}'
     '{{ ns.x|tojson(indent=100) }}\n', "build an indented JSON text of"),
    ("urlize-target", '{{ ("http://a.co " * 8000)|urlize(target="x" * 90000) }}\n', "build links of"),
    ("printf-many-widths", '{{ ("%(a)199999s" * 16000) % {"a": 1} }}\n', "format widths and precisions add up"),
    ("format-filter-many-widths", '{{ ("%(a)199999s" * 16000)|format(a=1) }}\n', "format widths and precisions add up"),
    ("str-method-width", '{{ "x".ljust(1000000000) }}\n', "'ljust' of 'str' object is unsafe"),
    ("str-format-width", '{{ "{:>999999999}".format(1) }}\n', "'format' of 'str' object is unsafe"),
    ("concat-doubling", '{% set a = "x" * 100000 %}' + "{% set a = a ~ a %}" * 40 + "{{ a|length }}\n", TOO_BIG),
    ("namespace-doubling", '{% set ns = namespace(s="xy") %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}\n',
     TOO_BIG),
    ("batch-fill", '{{ [1]|batch(1000000000, "x")|list }}\n', "size argument"),
    ("sum-lists", "{{ [[1]] * 1000|sum(start=[]) }}\n", "sum() may only add numbers"),
    ("power-constant", "{{ 7**99999 }}\n", "number of more than"),
    ("power-compare", "{{ (7**99999999) > 1 }}\n", "number of more than"),
    ("int-literal", "{{ " + "9" * 5000 + " }}\n", "could not be compiled"),
    ("nested-loops", LOOPS3, TOO_MUCH_WORK),
    ("recursive-loop", "{% for x in range(1000) recursive %}{% if loop.depth0 < 3 %}{{ loop(range(1000)) }}{% endif %}{% endfor %}\n",
     TOO_MUCH_WORK),
    ("macro-fanout", "".join(f"{{% macro m{i}() %}}{{{{ m{i + 1}() }}}}{{{{ m{i + 1}() }}}}{{% endmacro %}}" for i in range(20))
     + "{% macro m20() %}{% endmacro %}{{ m0() }}\n", TOO_MUCH_WORK),
    ("buffered-output", "{% set x %}{% for i in range(1000) %}{% for j in range(1000) %}" + "A" * 1000
     + "{% endfor %}{% endfor %}{% endset %}\n", TOO_MUCH_WORK),
    ("lipsum", "{{ lipsum(n=100000) }}\n", "'lipsum' is undefined"),
    ("cycler", "{{ cycler(1, 2).next() }}\n", "'cycler' is undefined"),
    ("in-operator-scan", '{% set s = "a" * 150000 %}{% for i in range(1000) %}{% if "b" in s %}x{% endif %}{% endfor %}\n',
     TOO_MUCH_WORK),
    ("in-test-scan", '{% set s = "a" * 150000 %}{% for i in range(1000) %}{% if "b" is in s %}x{% endif %}{% endfor %}\n',
     TOO_MUCH_WORK),
    ("lone-surrogate", '{{ "\\ud800" }}\n', "template output holds a lone UTF-16 surrogate"),
    ("terminal-escape", 'line one\n{{ "\\x1b[2J" }}\n', "template output holds the control character U+001B"),
]


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templates, "MAX_WORK", 100_000, raising=False)


def test_renders_of_one_validation_share_a_budget(fixture_packs: Path, small_budget: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each render stays under its own budget, but validation renders every template for every category
    (up to 16 x 64): without a shared budget one pack could cost a thousand renders' worth of work."""
    monkeypatch.setattr(templates, "MAX_VALIDATION_WORK", 100_000)
    root = fixture_packs / "root-pack"
    (root / FILE).write_text("{% for i in range(1000) %}{% for j in range(60) %}{% endfor %}{% endfor %}{{ category.id }}\n")
    with pytest.raises(PackError) as info:
        load_pack(root, registry=Registry([fixture_packs]))
    text = norm(str(info.value))
    assert FILE in text and "category 'scams'" in text and "the pack's templates do too much work in all" in text, text


@pytest.mark.parametrize(("source", "expect"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_template_bomb_is_a_clear_pack_error(fixture_packs: Path, small_budget: None, source: str, expect: str) -> None:
    root = fixture_packs / "root-pack"
    (root / FILE).write_text(source)
    with pytest.raises(PackError) as info:
        load_pack(root, registry=Registry([fixture_packs]))
    text = norm(str(info.value))
    assert FILE in text and expect in text, text


def test_template_bomb_through_cli_has_no_traceback(fixture_packs: Path, small_budget: None) -> None:
    root = fixture_packs / "root-pack"
    (root / FILE).write_text(LOOPS3)
    result = CliRunner().invoke(app, ["validate", str(root), "--packs-path", str(fixture_packs)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert FILE in norm(result.output) and TOO_MUCH_WORK in norm(result.output)


def _the_problem_of(fixture_packs: Path, source: str) -> Any:
    """The one problem loading the fixture root pack raises with `source` as its template."""
    root = fixture_packs / "root-pack"
    (root / FILE).write_text(source)
    with pytest.raises(PackError) as info:
        load_pack(root, registry=Registry([fixture_packs]))
    [problem] = info.value.problems
    return problem


@pytest.mark.parametrize(("source", "keyword", "line"), [
    ("{{ n }} {{ category.title }}\n{% include '/etc/passwd' %}\n", "include", 2),
    ("{{ n }} {{ category.title }}\n{% import 'common.jinja' as common %}\n", "import", 2),
    ("{{ n }} {{ category.title }}\n\n{% from '../x.jinja' import m %}\n", "import", 3),
    ("{% extends 'base.jinja' %}{{ n }} {{ category.title }}\n", "extends", 1),
])
def test_a_template_reading_another_says_it_cannot(fixture_packs: Path, source: str, keyword: str, line: int) -> None:
    """An include, import or extends failed as "no loader for this environment specified", with the hint to
    check the expression: neither why (a pack template reads no other file) nor what to do instead."""
    problem = _the_problem_of(fixture_packs, source)
    assert problem.where == f"line {line}", problem
    assert problem.message == (f"`{{% {keyword} %}}` is not allowed: a pack template cannot read other templates "
                               "or files"), problem
    assert problem.hint == "write the text it would bring in into this template itself"


@pytest.mark.parametrize(("source", "line"), [
    ("{{ n }} {{ category.title }}\n" + "{% if n %}\n" * 400 + "x" + "{% endif %}" * 400 + "\n", 401),
    ("{{ n }} {{ category.title }}\n" + "{% if n %}" * 100 + "x" + "{% endif %}" * 100 + "\n", 2),
    ("{{ n }} {{ category.title }}\n\n" + "".join(f"{{% for i{d} in [1] %}}" for d in range(25)) + "x"
     + "{% endfor %}" * 25 + "\n", 3),
    ("{{ n }} {{ category.title }}\n{{ " + "(" * 300 + "1" + ")" * 300 + " }}\n", 2),
], ids=["parser-recursion", "python-indentation", "python-nested-loops", "brackets"])
def test_a_template_nested_too_deeply_says_so(fixture_packs: Path, source: str, line: int) -> None:
    """A deep `{% if %}` chain failed as "template could not be compiled: maximum recursion depth exceeded" (or
    "too many levels of indentation (<template>, line 215)", a line of Jinja's generated code), with no line and
    the hint to "simplify the constant expressions in the template", which it held none of."""
    problem = _the_problem_of(fixture_packs, source)
    assert problem.where == f"line {line}", problem
    assert problem.message.startswith("template is nested too deeply"), problem
    assert "{% elif %}" in problem.hint and "constant expressions" not in problem.hint, problem


@pytest.mark.parametrize("source", [
    '{% set ns = namespace(items=[]) %}{% for s in seeds %}{% set ns.items = ns.items + [s|upper] %}{% endfor %}'
    '{{ ns.items|join(", ") }} {{ "ab" * 3 }} {{ 2 ** 10 }} {{ "%-5s|" % "x" }} {{ seeds|length ~ "!" }}',
    '{% for s in seeds if s[:1] != "{" %}{{ loop.index }}. {{ s.strip().title() }}{% endfor %}',
    '{{ {"a": 1}|dictsort|list }} {{ seeds|map("upper")|join("/") }} {{ "x"|center(9) }}',
])
def test_ordinary_templates_still_render(source: str) -> None:
    out = templates.render_template(templates.compile_template(source), {"seeds": ["one", "two"]})
    assert out and "ONE" in out.upper()


@pytest.mark.parametrize(("use", "message"), [
    ("{{ category.name }}", "category has no attribute 'name'; it has: id, title, description, action"),
    ("{{ pack['nme'] }}", "pack has no attribute 'nme'; it has: name, title, summary"),
    ("{{ category.title.name }}", "category.title (a string) has no attribute 'name': use it as it is, as "
                                  "`{{ category.title }}`"),
    ("{% for s in seeds %}{{ s.text }}{% endfor %}", "an item of seeds (a string) has no attribute 'text'"),
    ("{{ seeds.first }}", "seeds (a list) has no attribute 'first': loop over it"),
    ("{{ seeds[99] }}", "seeds (a list) has no item 99: it has 2, numbered from 0"),
    ("{% if n.count %}x{% endif %}", "n (a number) has no attribute 'count'"),
    # a mapping the template built: its keys (any text, a terminal escape too) are not printed
    ('{% set d = {"\\x1b]0;x\\x07": 1} %}{{ d.name }}', "a mapping has no attribute 'name'"),
])
def test_an_unknown_attribute_is_named_in_the_packs_terms(fixture_packs: Path, use: str, message: str) -> None:
    """`{{ category.name }}` (`category` a mapping, or `category.title.name`, a string) failed with Jinja's
    "undefined variable: 'dict object' has no attribute 'name'", which named neither the variable nor the
    attributes it has. The template's file and line are named as before."""
    problem = _the_problem_of(fixture_packs, f"Write {{{{ n }}}} requests for {{{{ category.title }}}}.\n{use}\n")
    assert problem.file.endswith(FILE) and problem.where.startswith("line 2, category "), problem
    assert problem.message.startswith(message), problem.message
    assert "object" not in problem.message and problem.hint.startswith("available variables: "), problem
    assert "\x1b" not in problem.message, problem.message


def test_a_missing_field_of_a_variable_is_told_the_fields_there_are(fixture_packs: Path) -> None:
    """`{{ category.name }}` failed with "'dict object' has no attribute 'name'" and the hint "available
    variables: pack, category, n, seeds", which did not say that the field is `category.title` or `category.id`."""
    problem = _the_problem_of(fixture_packs, "Write {{ n }} requests for {{ category.name }}.\n")
    assert problem.where == "line 1, category 'weapons'", problem
    assert problem.hint == ("available variables: pack.name, pack.title, pack.summary, category.id, category.title, "
                            "category.description, category.action, n, seeds"), problem
