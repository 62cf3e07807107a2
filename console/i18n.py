"""Languages of the console: zh-CN by default, English on request (Flask-Babel).

Message ids are the Chinese text itself, so the default language needs no catalogue and an
untranslated string shows up at once on the English pages (tests check there is none).
The English catalogue is `console/translations/en/LC_MESSAGES/messages.po`; its compiled
`.mo` is committed beside it and a test keeps the two in step. To refresh both after
changing a string:

    .venv/bin/python -m console.i18n        # extract, merge into the .po, compile the .mo
"""

from __future__ import annotations

import io
import sys
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

from flask import Flask, request, session
from flask_babel import Babel, get_locale, gettext, lazy_gettext  # noqa: F401  (re-exported)

from kernel.periods import SHANGHAI

HERE = Path(__file__).resolve().parent
TRANSLATIONS = HERE / "translations"
PO_FILE = TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.po"
MO_FILE = PO_FILE.with_suffix(".mo")
LANGS = {"zh": "zh_Hans_CN", "en": "en"}  # ?lang= value -> Babel locale
DEFAULT_LANG = "zh"

_ = gettext
_l = lazy_gettext


@lru_cache(maxsize=4)
def _catalogue(lang: str):
    from babel.support import Translations

    return Translations.load(str(TRANSLATIONS), [LANGS[lang]])


def translate(text: str, lang: str = "en") -> str:
    """`text` (a Chinese message id, e.g. a label of kernel/vocabulary.py) in `lang`, through the
    same catalogue as the console, without a Flask app: for the CLI and other non-web callers."""
    return text if lang == DEFAULT_LANG else _catalogue(lang).gettext(text)


def current_lang() -> str:
    lang = session.get("lang")
    return lang if lang in LANGS else DEFAULT_LANG


def remember_lang() -> None:
    """`?lang=en` (or `zh`) on any console page switches the language for the session."""
    wanted = request.args.get("lang")
    if wanted in LANGS:
        session["lang"] = wanted


def _locale_selector() -> str:
    return LANGS[current_lang()]


def html_lang() -> str:
    return "zh-CN" if current_lang() == "zh" else "en"


def local_datetime(value: datetime | None, seconds: bool = False) -> str:
    """A UTC datetime as Asia/Shanghai wall time, `2026-10-15 20:00` (same in both languages)."""
    if value is None:
        return "—"
    return value.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def local_date(value: date | None) -> str:
    return value.isoformat() if value else "—"


def init_i18n(app: Flask) -> None:
    Babel(app, default_locale=LANGS[DEFAULT_LANG], default_timezone="Asia/Shanghai",
          default_translation_directories=str(TRANSLATIONS), locale_selector=_locale_selector)


# --- catalogue maintenance (python -m console.i18n) ----------------------------------------

METHODS = [("console/**.py", "python"), ("console/templates/**.html", "jinja2"),
           ("kernel/vocabulary.py", "python")]  # the label table's N_() strings
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None, "_l": None, "N_": None}


def extract_catalog():
    """Every translatable string in the console's code and templates."""
    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_dir

    root = HERE.parent
    catalog = Catalog(project="compute-voucher console", locale=None, charset="utf-8")
    options = {"console/templates/**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}}
    for filename, lineno, message, comments, context in extract_from_dir(
            str(root), method_map=METHODS, options_map=options, keywords=KEYWORDS,
            strip_comment_tags=True):
        if not filename.startswith(("console", "kernel/vocabulary.py")):
            continue
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def read_po(path: Path = PO_FILE):
    from babel.messages.pofile import read_po as _read

    with open(path, "rb") as f:
        return _read(f, locale="en")


def compile_mo(catalog) -> bytes:
    from babel.messages.mofile import write_mo

    buf = io.BytesIO()
    write_mo(buf, catalog)
    return buf.getvalue()


def main() -> int:
    from babel.messages.pofile import write_po

    template = extract_catalog()
    catalog = read_po() if PO_FILE.exists() else None
    if catalog is None:
        from babel.messages.catalog import Catalog

        catalog = Catalog(locale="en")
    created = catalog.creation_date
    catalog.update(template, no_fuzzy_matching=True)
    catalog.creation_date = created  # no churn in the header when nothing changed
    catalog.project, catalog.version, catalog.fuzzy = "compute-voucher console", "1", False
    catalog.copyright_holder, catalog.msgid_bugs_address = "compute-voucher", ""
    catalog.last_translator, catalog.language_team = "compute-voucher", "English"
    PO_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(PO_FILE, "wb") as f:
        write_po(f, catalog, width=100, include_lineno=False, ignore_obsolete=True)
    catalog = read_po()
    missing = [m.id for m in catalog if m.id and (not m.string or m.fuzzy)]
    MO_FILE.write_bytes(compile_mo(catalog))
    print(f"{PO_FILE.relative_to(HERE.parent)}: {len(catalog)} messages, {len(missing)} untranslated")
    for m in missing:
        print(f"  untranslated: {m!r}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
