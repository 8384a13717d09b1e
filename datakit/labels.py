"""Anatomical labels from header text, through a rules file (datakit/label_rules.toml or the user's).

    rules = load_rules(None)                    # the shipped rules; or a path from --label-rules
    match = rules.label({"SeriesDescription": "Lunge 1.5 B70f", "StudyDescription": "CT Thorax"})
    match.label, match.rule, match.keyword, match.field   # 'thorax', 'thorax', 'lunge', 'SeriesDescription'

Precedence (documented in the shipped file and docs/datakit-input.md): fields in the
order of `fields`, the first field in which any rule matches decides; within it the
first rule in file order wins; nothing anywhere gives `default`. The match names
the rule, the keyword as written in the rules file and the field, never the header
text itself (which can hold names).
"""
from __future__ import annotations

import hashlib
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from datakit.errors import DatakitError
from datakit.walk import os_reason

CLASSES = ("head", "thorax", "abdomen", "extremities", "pelvis", "spine", "other")
FIELDS = ("SeriesDescription", "ProtocolName", "BodyPartExamined", "StudyDescription")
SHIPPED_RULES = Path(__file__).with_name("label_rules.toml")
_SPELLED = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "æ": "ae", "ø": "oe"})


def normalise(text: str) -> str:
    """Lower case, umlauts spelled out, accents dropped, other characters -> single spaces, padded with spaces."""
    text = text.lower().translate(_SPELLED)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " " + " ".join(re.findall(r"[a-z0-9]+", text)) + " "


@dataclass(frozen=True)
class LabelMatch:
    label: str
    rule: str
    keyword: str | None
    field: str | None


@dataclass(frozen=True)
class Rule:
    name: str
    label: str
    keywords: tuple[str, ...]
    pattern: re.Pattern

    def find(self, text: str) -> str | None:
        m = self.pattern.search(text)
        return self.keywords[m.lastindex - 1] if m else None


@dataclass(frozen=True)
class LabelRules:
    fields: tuple[str, ...]
    rules: tuple[Rule, ...]
    default: str
    source: str

    def label(self, texts: dict) -> LabelMatch:
        """The label of one series from its header texts (keyword -> str or None)."""
        for field in self.fields:
            value = texts.get(field)
            if not value:
                continue
            text = normalise(value)
            for rule in self.rules:
                keyword = rule.find(text)
                if keyword is not None:
                    return LabelMatch(rule.label, rule.name, keyword, field)
        return LabelMatch(self.default, "default", None, None)


def _compile(keywords: tuple[str, ...]) -> re.Pattern:
    # One group per keyword: the keyword's words in sequence, starting where a word starts.
    parts = [r"\s(" + r"\s".join(map(re.escape, normalise(k).split())) + ")" for k in keywords]
    return re.compile("|".join(parts))


def load_rules(path: str | Path | None = None) -> LabelRules:
    """Load and validate a rules file (None: the shipped one). Bad files raise DatakitError."""
    path = str(path) if path is not None else str(SHIPPED_RULES)
    try:
        st = Path(path).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    return _load(path, stamp)


def rules_identity(path: str | Path | None = None) -> dict:
    """Which rules file labelled an index, without its path (paths can name people or sites):
    {"name": file name, "shipped": whether it is tlx's own, "sha256": of its bytes}."""
    path = Path(path) if path is not None else SHIPPED_RULES
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatakitError(f"label rules file {str(path)!r} cannot be read ({os_reason(exc)})") from exc
    shipped = path.resolve() == SHIPPED_RULES.resolve()
    return {"name": path.name, "shipped": shipped, "sha256": hashlib.sha256(data).hexdigest()}


@lru_cache(maxsize=8)
def _load(path: str, stamp) -> LabelRules:
    """Cached per (path, mtime, size): every scan worker loads the rules once, an edited file is re-read."""
    name = Path(path).name
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatakitError(f"cannot read label rules {path!r} ({os_reason(exc)})") from exc
    except UnicodeDecodeError as exc:
        raise DatakitError(f"label rules {name}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save the file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DatakitError(f"label rules {name}: not valid TOML ({exc})") from exc
    unknown = set(data) - {"version", "fields", "default", "rule"}
    if unknown:
        raise DatakitError(f"label rules {name}: unknown key(s) {sorted(unknown)}; allowed: version, fields, "
                           "default, rule")
    if data.get("version", 1) != 1:
        raise DatakitError(f"label rules {name}: version {data['version']!r} is not supported; supported: 1")
    listed = data.get("fields", FIELDS)
    fields = tuple(listed) if isinstance(listed, (list, tuple)) else ()
    bad = [f for f in fields if not isinstance(f, str) or f not in FIELDS]
    if bad or not fields or len(set(fields)) != len(fields):
        raise DatakitError(f"label rules {name}: fields {listed!r} must be distinct names from "
                           f"{', '.join(FIELDS)}")
    default = data.get("default", "other")
    if default not in CLASSES:
        raise DatakitError(f"label rules {name}: default {default!r} is not a class; allowed: {', '.join(CLASSES)}")
    rules, names = [], set()
    for i, raw in enumerate(data.get("rule", [])):
        where = f"label rules {name}: rule {i + 1}"
        if not isinstance(raw, dict) or set(raw) - {"name", "label", "keywords"}:
            raise DatakitError(f"{where}: keys must be name, label, keywords")
        rule_name, label, keywords = raw.get("name"), raw.get("label"), raw.get("keywords")
        if not isinstance(rule_name, str) or not rule_name or rule_name in names or rule_name == "default":
            raise DatakitError(f"{where}: name {rule_name!r} must be a unique non-empty string other than 'default'")
        if label not in CLASSES:
            raise DatakitError(f"{where} ({rule_name}): label {label!r} is not a class; allowed: {', '.join(CLASSES)}")
        if (not isinstance(keywords, list) or not keywords
                or not all(isinstance(k, str) and normalise(k).strip() for k in keywords)):
            raise DatakitError(f"{where} ({rule_name}): keywords must be a non-empty list of strings with letters "
                               "or digits")
        names.add(rule_name)
        rules.append(Rule(rule_name, label, tuple(keywords), _compile(tuple(keywords))))
    if not rules:
        raise DatakitError(f"label rules {name}: no [[rule]] entries")
    return LabelRules(fields, tuple(rules), default, path)
