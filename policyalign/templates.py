"""The sandboxed Jinja environment for pack templates.

Packs are untrusted: templates run in Jinja's immutable sandbox (no attribute
access to dunders, no mutation of the context), with StrictUndefined so a typo
fails validation instead of rendering an empty string, no loader (a template
cannot include files), a small `range` cap, and a bound on output size.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_RANGE = 1000
MAX_OUTPUT_CHARS = 200_000

__all__ = [
    "TemplateFailure", "compile_template", "render_template", "template_env",
    "SecurityError", "TemplateSyntaxError", "UndefinedError",
]


class TemplateFailure(Exception):
    """A template failed to compile or render; `line` is the template line when known."""

    def __init__(self, message: str, line: int | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} items is not allowed in pack templates")
    return rng


def template_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.globals["range"] = _bounded_range
    return env


_ENV = template_env()


def compile_template(source: str) -> Any:
    """Compile template source; raises TemplateFailure with the line of a syntax error."""
    try:
        return _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateFailure(f"template syntax error: {exc.message}", exc.lineno,
                              "fix the Jinja syntax on that line") from None


def _error_line(exc: BaseException) -> int | None:
    """Find the template line in a render traceback (Jinja rewrites frames to template lines)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_template(template: Any, variables: dict[str, Any]) -> str:
    """Render a compiled template in the sandbox; every failure becomes TemplateFailure."""
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateFailure(f"template output exceeds {MAX_OUTPUT_CHARS} characters",
                                      hint="make the template shorter or loop over fewer items")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateFailure:
        raise
    except SecurityError as exc:
        raise TemplateFailure(f"unsafe template operation blocked by the sandbox: {exc}", _error_line(exc),
                              "templates may only use the variables pack, category, n and seeds") from None
    except UndefinedError as exc:
        raise TemplateFailure(f"undefined variable: {exc.message}", _error_line(exc),
                              "available variables: pack, category, n, seeds") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        raise TemplateFailure(f"template failed to render: {exc}", _error_line(exc),
                              "check the expression on that line") from None
