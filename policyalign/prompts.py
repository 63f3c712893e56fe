"""Rendering a pack's synthesis templates into generator prompts (used by `pa render` and synthesis)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInputError
from .pack import Pack, did_you_mean, template_variables
from .templates import compile_template, render_template


@dataclass(frozen=True)
class SynthesisPrompt:
    template: str
    format: str
    category: str
    text: str


def synthesis_prompts(pack: Pack, *, category: str | None = None, template: str | None = None,
                      n: int | None = None) -> list[SynthesisPrompt]:
    """One prompt per (template, category), in pack order; filters by id when given."""
    cats = [c for c in pack.categories if category in (None, c.id)]
    temps = [t for t in pack.templates if template in (None, t.id)]
    if category and not cats:
        raise InvalidInputError(f"pack {pack.name} has no category {category!r}",
                                hint=did_you_mean(category, [c.id for c in pack.categories], "its categories"))
    if template and not temps:
        raise InvalidInputError(f"pack {pack.name} has no template {template!r}",
                                hint=did_you_mean(template, [t.id for t in pack.templates], "its templates"))
    count = n or int(pack.synthesis.get("count_per_category", 20))
    prompts = []
    for spec in temps:
        compiled = compile_template(spec.source)
        for cat in cats:
            text = render_template(compiled, template_variables(pack.name, pack.title, pack.summary, cat, count))
            prompts.append(SynthesisPrompt(spec.id, spec.format, cat.id, text))
    return prompts
