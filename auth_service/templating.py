"""Jinja2 templates for mails and pages: the package's own, each overridable from TEMPLATES_DIR.

A file in TEMPLATES_DIR with the same relative name (`mail/verify_email.html`) wins; every
other template still comes from `auth_service/templates/`. HTML is autoescaped, plain text
is not. Every value also loses its bidirectional embedding, override and isolate
characters, so a name cannot visually reorder the words around it (escaping cannot).
"""

from functools import lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

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
