"""Jinja2 templates for mails and pages: the package's own, each overridable from TEMPLATES_DIR.

A file in TEMPLATES_DIR with the same relative name (`mail/verify_email.html`) wins; every
other template still comes from `auth_service/templates/`. HTML is autoescaped, plain text
is not. Every value also loses its bidirectional embedding, override and isolate
characters, so a name cannot visually reorder the words around it (escaping cannot).
"""

from functools import lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, TemplateError, meta, select_autoescape

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def strip_bidi_controls(value: object) -> object:
    """Applied to every `{{ value }}`; Markup stays Markup (its translate keeps the type)."""
    return value.translate(BIDI_CONTROLS) if isinstance(value, str) else value


@lru_cache(maxsize=8)
def environment(templates_dir: Path | None) -> Environment:
    """One environment per template directory, built once: it caches compiled templates
    (and reloads an override when its file changes)."""
    search_path = [templates_dir, PACKAGE_TEMPLATES] if templates_dir else [PACKAGE_TEMPLATES]
    return Environment(
        loader=ChoiceLoader([FileSystemLoader(path) for path in search_path]),
        autoescape=select_autoescape(disabled_extensions=("txt",), default=True),
        undefined=StrictUndefined,  # a misspelt variable fails loudly instead of vanishing from a mail
        finalize=strip_bidi_controls,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def template_source(templates_dir: Path | None, name: str) -> str:
    """A template file's text as written (for the pages' stylesheet, whose hash goes in the CSP)."""
    env = environment(templates_dir)
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, name)
    return source


def override_problems(templates_dir: Path) -> list[str]:
    """What is wrong with the overrides in TEMPLATES_DIR, checked at start-up so a mail does
    not fail at send time: each override must render with the variables its package
    version is given (a misspelt or unknown variable, or a syntax error, is reported)."""
    package, overridden = environment(None), environment(templates_dir)
    problems = []
    for path in sorted(templates_dir.rglob("*")):
        name = path.relative_to(templates_dir).as_posix()
        if not path.is_file() or not (PACKAGE_TEMPLATES / name).is_file():
            continue
        try:
            source = template_source(None, name)
            sample = dict.fromkeys(meta.find_undeclared_variables(package.parse(source)), "x")
            package.get_template(name).render(sample)
        except TemplateError:
            continue  # the package's own needs richer values than a sample: nothing to compare
        try:
            rendered = overridden.get_template(name).render(sample)
        except TemplateError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if name.startswith("mail/") and name.endswith(".txt") and not rendered.startswith("Subject:"):
            problems.append(f"{name}: a mail's text must start with a 'Subject:' line")
    return problems
