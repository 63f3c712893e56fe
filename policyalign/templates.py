"""The sandboxed Jinja environment for pack templates.

Packs are untrusted: templates run in Jinja's immutable sandbox (no attribute
access to dunders, no mutation of the context), with StrictUndefined so a typo
fails validation instead of rendering an empty string, no loader (a template
cannot include files), a small `range` cap, and a bound on output size.

The sandbox only stops a template from *reaching* things; it does nothing about
a template that asks for a 10 GB string, a 100-million-digit integer or 10^9
loop iterations. Those are bounded here, deterministically (the same template
passes or fails on every machine), by three mechanisms:

* **Size checks before building a value.** Every operation that can make a
  value much bigger than its inputs is checked against `MAX_VALUE_CHARS`
  *before* it runs: the binary operators `*` `+` `%` `**` (`call_binop`), `~`
  concatenation, list/tuple/dict literals, and the growing filters (`center`,
  `indent`, `format`, `join`, `replace`, `wordwrap`, `batch`, `slice`, `sum`, `tojson`,
  `urlize`).
  Every filter input and result (a lazy one item by item), and every output expression, is checked too, so
  no filter ever works on more than `MAX_VALUE_CHARS` worth of data. Integers are
  capped at `MAX_INT_BITS` (so `7**99999999` is refused, not computed). String
  methods are limited to a read-only allow-list (`"x".ljust(10**9)`,
  `"{:>999999999}".format(1)` are blocked like dunders).
* **A work budget per render** (`MAX_WORK` steps): every loop iteration (the
  `for` iterable is wrapped in a counting iterator by an AST rewrite, which also
  covers `loop(...)` recursion), every call (macros, methods, globals), every
  attribute/item lookup, binary operator, filter and test, and every 10 characters a filter or
  test processes, a comparison (`in`, `==`, `<`) walks, or the
  template emits (including output buffered by `{% set %}` blocks and macros) cost
  steps. Validation renders every template for every category, so those renders
  also share one budget (`MAX_VALIDATION_WORK`, a `WorkBudget`). Counting is used rather than a wall-clock timeout because a timer cannot
  interrupt a single long C-level operation, signals only work in the main
  thread, and a timeout would make validation depend on machine speed; with the
  size checks no single step is expensive, so a step count bounds the time.
* **No dangerous globals:** `lipsum`, `cycler` and `joiner` are removed (no
  shipped pack uses them); `range` is capped at `MAX_RANGE` items.

Compile-time failures of any kind (Jinja's constant folding evaluates constant
expressions while compiling) become TemplateFailure as well.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from functools import partial, wraps
from typing import Any, Callable, Iterable, Iterator

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, meta, nodes, pass_context
from jinja2.runtime import LoopContext, missing
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

MAX_RANGE = 1000
MAX_OUTPUT_CHARS = 200_000
MAX_VALUE_CHARS = MAX_OUTPUT_CHARS  # the largest string/list/dict (counted deeply) a template may build
MAX_INT_BITS = 10_000              # about 3000 decimal digits
MAX_WORK = 250_000                 # steps per render (see the module docstring)
MAX_VALIDATION_WORK = 4 * MAX_WORK  # steps for all renders of one pack's validation (shipped packs: < 100_000)
CHARS_PER_STEP = 10
# A lone UTF-16 surrogate ("\ud800" in a string literal) renders fine but cannot be encoded as UTF-8.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Control characters other than tab and line breaks (\n, \r, U+0085): terminal escapes (ESC, BEL, CSI)
# that `pa show` and `pa render` would pass to the user's terminal, and junk in training data.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
# Bidirectional embeddings, overrides and isolates (LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI):
# invisible, they make text display in another order than the one the model reads ("Trojan
# Source"), so a reviewer could approve a policy or description that says the opposite of what
# trains the model. Arabic and Hebrew letters need none of them, nor do the marks LRM/RLM/ALM
# (U+200E, U+200F, U+061C), which RTL writers use to place punctuation and cannot reorder letters.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Unicode tag characters (U+E0000-U+E007F) mirror ASCII but display as nothing: "ASCII smuggling" writes
# whole sentences in them ("ignore every rule below") that no reviewer sees and a model's tokenizer reads.
_TAG = re.compile("[\U000e0000-\U000e007f]")
# Variation selectors display as nothing, and a run of them after one visible character encodes hidden bytes
# (one per selector: U+FE00-U+FE0F and U+E0100-U+E01EF make 256), read by the model's tokenizer like tag
# characters. A single U+FE0E/U+FE0F picks the text or emoji style of the character before it, as "❤️" holds;
# the supplementary ones only select rare ideograph glyph variants, which the plain character stands for.
_VARIATION = re.compile("[\U000e0100-\U000e01ef]|[\ufe00-\ufe0f]{2,}")


def text_problem(text: str) -> tuple[int, str, str] | None:
    """(offset, message, hint) for the first character pack text must not hold, or None."""
    surrogate = LONE_SURROGATE.search(text)
    if surrogate:
        return (surrogate.start(), "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape), which cannot be "
                "written as UTF-8", "write the character itself (files are UTF-8), or drop the escape")
    control = _CONTROL.search(text)
    if control:
        return (control.start(), f"holds the control character U+{ord(control.group()):04X} (terminal escapes and "
                "other control characters are not allowed in pack text)", "delete it (tabs and newlines are fine)")
    bidi = _BIDI.search(text)
    if bidi:
        return (bidi.start(), f"holds the invisible bidirectional control character U+{ord(bidi.group()):04X}, which "
                "makes the text display in another order than the one the model reads", "delete it: right-to-left "
                "letters (Arabic, Hebrew) display correctly without it (the marks U+200E/U+200F are allowed)")
    tag = _TAG.search(text)
    if tag:
        return (tag.start(), f"holds the invisible tag character U+{ord(tag.group()):04X} (tag characters spell out "
                "text that the model reads and no reviewer sees)", "delete it, and any run of them around it")
    variation = _VARIATION.search(text)
    if variation:
        return (variation.start(), f"holds the invisible variation selector U+{ord(variation.group()[0]):04X} "
                f"{'in a run of them ' if len(variation.group()) > 1 else ''}(a run of variation selectors spells out "
                "hidden bytes that the model reads and no reviewer sees)", "delete it, and any run of them around it "
                "(one U+FE0F after an emoji is fine; write an ideograph without a variant selector)")
    return None

__all__ = [
    "TemplateFailure", "TemplateLimitExceeded", "UNDEFINED", "UnknownAttribute", "WorkBudget", "compile_template",
    "render_template", "template_env",
    "SecurityError", "TemplateSyntaxError", "UndefinedError",
]


# How the failure for a variable the template names but is not given begins (`pack._stand_in_failure` tells it
# from the others: it depends on no variable's value).
UNDEFINED = "undefined variable: "


class TemplateFailure(Exception):
    """A template failed to compile or render; `line` is the template line when known."""

    def __init__(self, message: str, line: int | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


class TemplateLimitExceeded(SecurityError):
    """A template asked for too much work or too large a value."""


# --------------------------------------------------------------------------- the work budget


class _Budget:
    __slots__ = ("left", "total")

    def __init__(self, steps: int, total: "WorkBudget | None" = None) -> None:
        self.left = steps
        self.total = total


class WorkBudget:
    """Steps shared by many renders: validation renders every template for every category (up to
    16 x 64 renders), so a per-render budget alone let one pack cost a thousand renders' worth of work."""

    __slots__ = ("left",)

    def __init__(self, steps: int | None = None) -> None:
        self.left = MAX_VALIDATION_WORK if steps is None else steps


_BUDGET: ContextVar[_Budget | None] = ContextVar("policyalign_template_budget", default=None)


def _spend(steps: int) -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.left -= steps
    if budget.left < 0:
        raise TemplateLimitExceeded(
            f"template does too much work (more than {MAX_WORK} steps of loop iterations, calls, filters "
            f"and output)")
    if budget.total is not None:
        budget.total.left -= steps
        if budget.total.left < 0:
            raise TemplateLimitExceeded(
                f"the pack's templates do too much work in all (more than {MAX_VALIDATION_WORK} steps over every "
                "template and category)")


def _size(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """Deep size of a value (characters, items, digits/3); stops counting once past `limit`."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item) + 1
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, dict):
            total += len(item) + 1
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:
            total += 1
        if total > limit:
            return total
    return total


def _limit(size: int, what: str = "a value") -> None:
    if size > MAX_VALUE_CHARS:
        raise TemplateLimitExceeded(f"template would build {what} of more than {MAX_VALUE_CHARS} characters")


def _checked_size(value: Any) -> int:
    size = _size(value)
    _limit(size)
    return size


# --------------------------------------------------------------------------- operators


_PRINTF_WIDTH = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: Any) -> int:
    """The characters `fmt`'s widths and precisions may add, all of them: each one under the bound was
    not enough, as `"%(a)199999s" * 16000 % {"a": 1}` built a 3 GB string from a 192 KB format."""
    if not isinstance(fmt, str):
        return 0
    padding = 0
    for width, precision in _PRINTF_WIDTH.findall(fmt):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_VALUE_CHARS):
                raise TemplateLimitExceeded(f"format width or precision {number!r} is not allowed in pack templates")
            padding += int(number or 0)
    if padding > MAX_VALUE_CHARS:
        raise TemplateLimitExceeded(f"format widths and precisions add up to more than {MAX_VALUE_CHARS} characters")
    return padding


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if right * abs(left).bit_length() > MAX_INT_BITS:
                raise TemplateLimitExceeded(f"template would build a number of more than {MAX_INT_BITS} bits")
    elif operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimitExceeded(f"template would build a number of more than {MAX_INT_BITS} bits")
        elif _is_int(left) or _is_int(right):
            count, seq = (left, right) if _is_int(left) else (right, left)
            if isinstance(seq, (str, list, tuple)) and count > 0:
                size = _size(seq)
                _limit(size * count)
                _spend(1 + size * count // CHARS_PER_STEP)
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            size = _size(left) + _size(right)
            _limit(size)
            _spend(1 + size // CHARS_PER_STEP)
    elif operator == "%":
        if isinstance(left, str):
            size = len(left) + _check_printf(left) + _size(right)
            _limit(size)
            _spend(1 + size // CHARS_PER_STEP)


# --------------------------------------------------------------------------- filters


def _int_arg(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _check_center(value: Any, width: Any = 80) -> None:
    _limit(_size(value) + _int_arg(width))


def _check_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    size = _checked_size(s)
    lines = s.count("\n") + 1 if isinstance(s, str) else size + 1
    _limit(size + lines * (len(width) if isinstance(width, str) else _int_arg(width)))


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _limit(_size(value) + _check_printf(value) + _size(list(args)) + _size(kwargs))


def _check_join(value: Any, d: Any = "", attribute: Any = None) -> None:
    items = value if isinstance(value, (str, list, tuple, dict, set, frozenset)) else ()
    _limit(_size(items) + len(items) * _size(d))


def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    _checked_size(s)
    text, old_s, new_s = str(s), str(old), str(new)
    hits = text.count(old_s) if old_s else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _limit(len(text) + hits * max(0, len(new_s) - len(old_s)))


def _check_wordwrap(s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None,
                    break_on_hyphens: bool = True) -> None:
    size = _checked_size(s)
    lines = min(size, 2 * size // max(1, _int_arg(width)) + 1)
    _limit(size + lines * _size(wrapstring or "\n"))


def _check_count_arg(value: Any, count: Any, fill_with: Any = None) -> None:
    if _int_arg(count) > MAX_VALUE_CHARS:
        raise TemplateLimitExceeded(f"a size argument of more than {MAX_VALUE_CHARS} is not allowed in pack templates")


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, (int, float)):
        raise TemplateLimitExceeded("sum() may only add numbers in pack templates")


def _check_tojson(value: Any, indent: Any = None) -> None:
    """`indent` adds a line per item, indented by the item's depth: `([0] * 60000)|tojson(indent=199990)`
    is 12 GB of spaces."""
    width = len(indent) if isinstance(indent, str) else _int_arg(indent)
    if width <= 0:
        return
    total, stack = _size(value), [(value, 1)]
    while stack and total <= MAX_VALUE_CHARS:
        item, depth = stack.pop()
        children = list(item.values()) if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        total += (len(children) + 1) * depth * width  # each child's line, and the closing bracket's
        stack.extend((child, depth + 1) for child in children)
    _limit(total, "an indented JSON text")


def _check_urlize(value: Any, trim_url_limit: Any = None, nofollow: Any = False, target: Any = None, rel: Any = None,
                  extra_schemes: Any = None) -> None:
    """`target` and `rel` go into the link of every URL: 40,000 URLs and a 199,000-character target are 8 GB."""
    extra = sum(len(part) for part in (target, rel) if isinstance(part, str))
    _limit(_size(value) + len(str(value).split()) * extra, "links")


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_center, "indent": _check_indent, "format": _check_format, "join": _check_join,
    "replace": _check_replace, "wordwrap": _check_wordwrap, "batch": _check_count_arg,
    "slice": _check_count_arg, "sum": _check_sum, "tojson": _check_tojson, "urlize": _check_urlize,
}


def _guard_test(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a test (`x is in s`, also run per item by select/reject): charge the size of its arguments."""
    offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _spend(1 + (_size(list(args[offset:])) + _size(kwargs)) // CHARS_PER_STEP)
        return func(*args, **kwargs)

    return guarded


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter: charge its input size, run its size check, refuse oversized inputs/results."""
    offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    check = _FILTER_CHECKS.get(name)

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        args = list(args)
        if name == "join" and len(args) > offset and not isinstance(args[offset], (str, list, tuple, dict)):
            args[offset] = list(args[offset])  # a lazy iterable: materialise it so its size can be checked
        size = _size(args[offset:]) + _size(kwargs)
        _limit(size)
        _spend(1 + size // CHARS_PER_STEP)
        if check is not None:
            check(*args[offset:], **kwargs)
        result = func(*args, **kwargs)
        _limit(_size(result))
        return _sized_items(result) if isinstance(result, Iterator) else result

    return guarded


def _sized_items(items: Iterator[Any]) -> Iterator[Any]:
    """A filter's lazy result (`map`, `select`, `unique`, `batch`...), its items charged as they come: each was
    size-checked alone, so `([0] * 66000)|map("center", 199990)|list` built 13 GB before `list`'s result was
    seen. Together they may not exceed MAX_VALUE_CHARS, as the list they could make may not."""
    total = 0
    for item in items:
        size = _size(item)
        total += size
        _limit(total)
        _spend(1 + size // CHARS_PER_STEP)
        yield item


# --------------------------------------------------------------------------- hooks inserted by the AST rewrite


@pass_context
def _pa_iter(context: Any, iterable: Any) -> Iterator[Any]:
    return _counted(iterable)


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _spend(1)
        yield item


@pass_context
def _pa_concat(context: Any, parts: list[Any]) -> str:
    size = sum(_checked_size(part) for part in parts)
    _limit(size)
    _spend(1 + size // CHARS_PER_STEP)
    return "".join(map(str, parts))


@pass_context
def _pa_sized(context: Any, value: Any) -> Any:
    size = _checked_size(value)
    _spend(1 + size // CHARS_PER_STEP)
    return value


@pass_context
def _pa_out(context: Any, value: Any) -> Any:
    if not isinstance(value, str):
        _checked_size(value)
        value = str(value)
    _limit(len(value), "an output of")
    _spend(1 + len(value) // CHARS_PER_STEP)
    return value


_HOOKS = {"_pa_iter": _pa_iter, "_pa_concat": _pa_concat, "_pa_sized": _pa_sized, "_pa_out": _pa_out}


def _hook(name: str, node: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Meter(NodeTransformer):
    """Rewrite a parsed template so loops, `~`, literals and output go through the hooks above."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = _hook("_pa_iter", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _hook("_pa_concat", nodes.List(node.nodes, lineno=node.lineno))

    def visit_List(self, node: nodes.List) -> nodes.Node:
        return _hook("_pa_sized", self.generic_visit(node))

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        return _hook("_pa_sized", self.generic_visit(node))

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        node = self.generic_visit(node)
        return _hook("_pa_sized", node) if node.ctx == "load" else node

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        """`in`, `==` and `<` walk their operands (`t in s` scans all of `s`): charge their size."""
        node = self.generic_visit(node)
        node.expr = _hook("_pa_sized", node.expr)
        for operand in node.ops:
            operand.expr = _hook("_pa_sized", operand.expr)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        node = self.generic_visit(node)
        node.nodes = [_hook("_pa_out", child) for child in node.nodes]
        return node


# --------------------------------------------------------------------------- the environment


_SAFE_STR_METHODS = frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii",
    "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle",
    "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rindex",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title",
    "upper",
})


class PackSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus size checks on operators, calls and string methods."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend(1)
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> None:
        """No `str.format`/`format_map` at all (a width like `{:>999999999}` builds a huge string)."""
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr not in _SAFE_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend(1)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend(1)
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        size = _size(getattr(__obj, "__self__", None)) + _size(list(args)) + _size(kwargs)
        _spend(1 + size // CHARS_PER_STEP)
        if isinstance(__obj, LoopContext) and args:  # loop(...) in a recursive for loop: count its iterations too
            args = (_counted(args[0]), *args[1:])
        result = super().call(__context, __obj, *args, **kwargs)
        _limit(_size(result))
        return result


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} items is not allowed in pack templates")
    return rng


class UnknownAttribute(UndefinedError):
    """A lookup of a name or element that the value holds none of (`{{ category.name }}`), keeping the value
    (`owner`) and the name (`attribute`): Jinja's own message, "'dict object' has no attribute 'name'", says
    neither which variable that is nor what it does have."""

    def __init__(self, message: str, owner: Any, attribute: Any) -> None:
        super().__init__(message)
        self.owner, self.attribute = owner, attribute


class _PackUndefined(StrictUndefined):
    """StrictUndefined whose failed lookups raise `UnknownAttribute` (a top-level name that is not a variable
    stays Jinja's "'x' is undefined")."""

    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: Any = None,
                 exc: Any = UndefinedError) -> None:
        if obj is not missing and exc is UndefinedError:
            exc = partial(UnknownAttribute, owner=obj, attribute=name)
        super().__init__(hint, obj, name, exc)


def template_env() -> PackSandbox:
    env = PackSandbox(
        undefined=_PackUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.globals["range"] = _bounded_range
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    env.filters = {name: _guard_filter(name, func) for name, func in env.filters.items()}
    env.filters.update(_HOOKS)
    env.tests = {name: _guard_test(func) for name, func in env.tests.items()}
    return env


_ENV = template_env()


def compile_template(source: str) -> Any:
    """Compile template source; raises TemplateFailure with the line of a syntax error."""
    token = _BUDGET.set(_Budget(MAX_WORK))  # constant folding runs filters and operators at compile time
    try:
        tree = _ENV.parse(source)
        _refuse_other_templates(tree)
        return _ENV.from_string(_Meter().visit(tree))
    except TemplateFailure:
        raise
    except TemplateSyntaxError as exc:
        raise TemplateFailure(f"template syntax error: {exc.message}", exc.lineno,
                              "fix the Jinja syntax on that line") from None
    except (RecursionError, SyntaxError):
        # Jinja parses recursively, and Python compiles its generated code to at most 100 indentation levels
        # and 20 nested loops: ~100 nested `{% if %}`s failed as "maximum recursion depth exceeded" (or "too
        # many levels of indentation (<template>, line 215)", a line of generated code), hinted to simplify
        # constant expressions.
        raise TemplateFailure("template is nested too deeply (blocks such as `{% if %}` and `{% for %}` inside one "
                              "another, or brackets in an expression)", _deepest_line(source),
                              "nest less: chain conditions with `{% elif %}` rather than an `{% if %}` in each "
                              "`{% else %}`, and split long expressions with `{% set %}`") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: any failure is the template's fault
        raise TemplateFailure(f"template could not be compiled: {_describe(exc)}", None,
                              "simplify the constant expressions in the template") from None
    finally:
        _BUDGET.reset(token)


_NESTING_TAGS = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape"})


def _deepest_line(source: str) -> int | None:
    """The line where the template's nesting (blocks and brackets) first reaches its deepest, from the lexer,
    which does not recurse; None when the template does not lex."""
    depth, deepest, line, after_block_begin = 0, 0, None, False
    try:
        for lineno, kind, value in _ENV.lex(source):
            if kind == "whitespace":
                continue
            if kind == "name" and after_block_begin:
                depth += value in _NESTING_TAGS
                depth -= value.startswith("end") and value[3:] in _NESTING_TAGS
            elif kind == "operator" and value in "([{":
                depth += 1
            elif kind == "operator" and value in ")]}":
                depth -= 1
            after_block_begin = kind == "block_begin"
            if depth > deepest:
                deepest, line = depth, lineno
    except TemplateSyntaxError:
        return None
    return line


def _refuse_other_templates(tree: nodes.Template) -> None:
    """`{% include %}`, `{% import %}` and `{% extends %}` read another template, which the sandbox has no loader
    for (a pack's files stay data): they failed only when rendered, as "no loader for this environment
    specified" with the hint to check the expression, which said neither why nor what to do instead."""
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        keyword = {"Include": "include", "Import": "import", "FromImport": "import", "Extends": "extends"}[type(node).__name__]
        raise TemplateFailure(f"`{{% {keyword} %}}` is not allowed: a pack template cannot read other templates or "
                              "files", node.lineno, "write the text it would bring in into this template itself")


def unused_variables(source: str, names: Iterable[str]) -> list[str]:
    """Those of `names` that the template never reads from the variables it is given (one it `{% set %}`s
    itself does not count). Static: a use in a branch that never runs counts as a use. For a `source`
    that `compile_template` accepted."""
    used = meta.find_undeclared_variables(_ENV.parse(source))
    return [name for name in names if name not in used]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _error_line(exc: BaseException) -> int | None:
    """Find the template line in a render traceback (Jinja rewrites frames to template lines)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _variable_names(variables: dict[str, Any]) -> list[str]:
    """Every name a template may use, fields included (`category.id`, ...): `{{ category.name }}` failed with
    "'dict object' has no attribute 'name'" and the hint "pack, category, n, seeds", which did not say which
    fields `category` has."""
    return [f"{key}.{field}" if isinstance(value, dict) else key
            for key, value in variables.items() for field in (value if isinstance(value, dict) else [key])]


def _kind(value: Any) -> str:
    """What a template value is, as a pack author would say it."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (int, float)):
        return "a number"
    return "a " + type(value).__name__


def _value_name(value: Any, variables: dict[str, Any]) -> str | None:
    """The variable (`category`, `category.title`, `an item of seeds`) that `value` is, found by identity
    among the variables the template was given; None for a value the template built itself."""
    for key, given in variables.items():
        if given is value:
            return key
        if isinstance(given, dict):
            found = next((f"{key}.{field}" for field, inner in given.items() if inner is value), None)
        elif isinstance(given, (list, tuple)):
            found = next((f"an item of {key}" for inner in given if inner is value), None)
        else:
            found = None
        if found:
            return found
    return None


def _unknown_attribute_message(exc: UnknownAttribute, variables: dict[str, Any]) -> str:
    """`{{ category.name }}` in the pack's terms: which variable has no such attribute, and what it has
    (a mapping's fields; text, a number or a list has none a template may use)."""
    owner, attribute = exc.owner, exc.attribute
    name = _value_name(owner, variables)
    what = name if name and isinstance(owner, dict) else f"{name} ({_kind(owner)})" if name else _kind(owner)
    if isinstance(owner, (list, tuple)) and not isinstance(attribute, str):
        return f"{what} has no item {attribute!r}: it has {len(owner)}, numbered from 0"
    lookup = f"attribute {attribute!r}" if isinstance(attribute, str) else f"element {attribute!r}"
    if isinstance(owner, dict) and name:  # the fields of a given variable; a mapping the template built may hold
        return f"{what} has no {lookup}; it has: {', '.join(map(str, owner)) or 'none'}"  # any text, escapes too
    if isinstance(owner, (list, tuple)):
        return f"{what} has no {lookup}: loop over it (`{{% for item in ... %}}`) or take one item (`[0]`)"
    if isinstance(owner, dict):
        return f"{what} has no {lookup}"
    return f"{what} has no {lookup}: use it as it is" + (f", as `{{{{ {name} }}}}`" if name and " " not in name else "")


def render_template(template: Any, variables: dict[str, Any], total: WorkBudget | None = None) -> str:
    """Render a compiled template in the sandbox; every failure becomes TemplateFailure. `total`, when
    given, is also charged (shared by the renders of one validation)."""
    token = _BUDGET.set(_Budget(MAX_WORK, total))
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateFailure(f"template output exceeds {MAX_OUTPUT_CHARS} characters",
                                      hint="make the template shorter or loop over fewer items")
            chunks.append(chunk)
        text = "".join(chunks)
        problem = text_problem(text)
        if problem:
            raise TemplateFailure(f"template output {problem[1]}", hint=problem[2])
        return text
    except TemplateFailure:
        raise
    except TemplateLimitExceeded as exc:
        raise TemplateFailure(str(exc), _error_line(exc),
                              "pack templates must stay small: loop over fewer items and build smaller values") from None
    except SecurityError as exc:
        raise TemplateFailure(f"unsafe template operation blocked by the sandbox: {exc}", _error_line(exc),
                              "templates may only use the variables pack, category, n and seeds") from None
    except UnknownAttribute as exc:
        raise TemplateFailure(_unknown_attribute_message(exc, variables), _error_line(exc),
                              f"available variables: {', '.join(_variable_names(variables))}") from None
    except UndefinedError as exc:
        raise TemplateFailure(f"{UNDEFINED}{exc.message}", _error_line(exc),
                              f"available variables: {', '.join(_variable_names(variables))}") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        raise TemplateFailure(f"template failed to render: {exc}", _error_line(exc),
                              "check the expression on that line") from None
    except MemoryError as exc:  # a backstop: the size checks should make this unreachable
        raise TemplateFailure("template ran out of memory", _error_line(exc),
                              "pack templates must stay small: build smaller values") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: any failure is the template's fault
        raise TemplateFailure(f"template failed to render: {_describe(exc)}", _error_line(exc),
                              "check the expression on that line") from None
    finally:
        _BUDGET.reset(token)
