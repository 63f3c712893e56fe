"""Rendering a pack's synthesis templates into generator prompts (used by `pa render` and synthesis)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInputError
from .errors import did_you_mean
from .pack import Category, Pack, TemplateSpec, template_variables
from .templates import TemplateFailure, compile_template, render_template


@dataclass(frozen=True)
class SynthesisPrompt:
    template: str
    format: str
    category: str
    text: str


def synthesis_prompts(pack: Pack, *, category: str | None = None, template: str | None = None,
                      n: int | None = None) -> list[SynthesisPrompt]:
    """One prompt per (template, category), in pack order; filters by id when given (an empty id too:
    `--category ""` matches nothing and is an error, not an empty, successful listing)."""
    cats = [c for c in pack.categories if category in (None, c.id)]
    temps = [t for t in pack.templates if template in (None, t.id)]
    if category is not None and not cats:
        raise InvalidInputError(f"pack {pack.name} has no category {category!r}",
                                hint=did_you_mean(category, [c.id for c in pack.categories], "its categories"))
    if template is not None and not temps:
        raise InvalidInputError(f"pack {pack.name} has no template {template!r}",
                                hint=did_you_mean(template, [t.id for t in pack.templates], "its templates"))
    _check_n(n)
    count = n if n is not None else int(pack.synthesis.get("count_per_category", 20))
    return [SynthesisPrompt(spec.id, spec.format, cat.id, render_synthesis_prompt(pack, spec, cat, count))
            for spec in temps for cat in cats]


def _check_n(n: int | None) -> None:
    """`pa render --n` held to the bound `pa synthesize --n` is (the pack schema's for count_per_category):
    `--n 100000` rendered, as "exactly as the generator sees them", a prompt no synthesis would ever send."""
    if n is None:
        return
    from .synthesize import within_schema  # only for a given --n: synthesize imports dedup, and numpy with it

    within_schema(n, "count_per_category", "--n")


def render_synthesis_prompt(pack: Pack, template: TemplateSpec, category: Category, n: int) -> str:
    """One template rendered for one category. Validation renders with the pack's own `n`; another `n`
    (`--n`) can still make a template fail (e.g. `range(n)` past the sandbox's cap): a clear error, not a traceback."""
    try:
        compiled = compile_template(template.source)
        return render_template(compiled, template_variables(pack.name, pack.title, pack.summary, category, n))
    except TemplateFailure as exc:
        raise InvalidInputError(f"template failed for category {category.id!r} with n={n}: {exc.message}",
                                file=str(pack.root / template.file), where=f"line {exc.line}" if exc.line else "",
                                hint=exc.hint or "run `pa validate` on the pack") from None
