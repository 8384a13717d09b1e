"""Label rules: shipped English/German keywords, documented precedence, normalisation, validation errors."""
import pytest

from datakit.errors import DatakitError
from datakit.labels import CLASSES, load_rules, normalise


@pytest.fixture(scope="module")
def rules():
    return load_rules(None)


@pytest.mark.parametrize("text, label", [
    ("CT Schädel nativ", "head"), ("CCT", "head"), ("Kopf", "head"), ("Hirn 5mm", "head"), ("CT Head", "head"),
    ("CT Thorax mit KM", "thorax"), ("Lunge 1.5 B70f", "thorax"), ("Chest", "thorax"),
    ("CT Abdomen", "abdomen"), ("Oberbauch", "abdomen"), ("Leber portalvenös", "abdomen"),
    ("CT Abdomen/Becken", "abdomen"),
    ("CT Becken", "pelvis"), ("Hüfte links", "pelvis"), ("PELVIS", "pelvis"),
    ("LWS 2.0", "spine"), ("BWS", "spine"), ("HWS", "spine"), ("Wirbelsäule", "spine"), ("CT Thoracic Spine", "spine"),
    ("Knie rechts", "extremities"), ("Kniegelenk", "extremities"), ("Fuß", "extremities"),
    ("Sprunggelenk", "extremities"), ("Schulter", "extremities"), ("Hand", "extremities"),
    ("CT Thorax-Abdomen", "other"), ("Polytrauma", "other"), ("Ganzkörper-CT", "other"),
    ("Chest/Abdomen/Pelvis", "other"),
])
def test_shipped_keywords(rules, text, label):
    assert rules.label({"StudyDescription": text}).label == label


def test_series_text_beats_study_text_and_nothing_gives_default(rules):
    m = rules.label({"SeriesDescription": "Lunge 1mm", "StudyDescription": "CT Polytrauma"})
    assert (m.label, m.rule, m.keyword, m.field) == ("thorax", "thorax", "lunge", "SeriesDescription")
    m = rules.label({"SeriesDescription": "Weichteil 5mm", "BodyPartExamined": "HEAD", "StudyDescription": "Abdomen"})
    assert (m.label, m.field) == ("head", "BodyPartExamined")
    m = rules.label({"SeriesDescription": "Knochen 1mm", "StudyDescription": "Routine"})
    assert (m.label, m.rule, m.keyword, m.field) == ("other", "default", None, None)


def test_keywords_match_at_word_starts_only(rules):
    assert rules.label({"StudyDescription": "Beckenkamm"}).label == "pelvis"           # compound, prefix
    assert rules.label({"StudyDescription": "Pneumothorax"}).label == "other"          # not at a word start
    assert normalise("  Schädel-CT / Fuß ") == " schaedel ct fuss "


def test_user_rules_file(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text('fields = ["StudyDescription"]\ndefault = "thorax"\n'
                 '[[rule]]\nname = "brain"\nlabel = "head"\nkeywords = ["Gehirn", "neuro cranium"]\n')
    rules = load_rules(f)
    assert rules.label({"StudyDescription": "Neuro-Cranium"}).keyword == "neuro cranium"
    assert rules.label({"SeriesDescription": "Gehirn"}).label == "thorax"      # field not listed: default


@pytest.mark.parametrize("text, message", [
    ('[[rule]]\nname = "x"\nlabel = "belly"\nkeywords = ["a"]\n',
     r"label 'belly' is not a class; allowed: head, thorax, abdomen, extremities, pelvis, spine, other"),
    ('default = "legs"\n[[rule]]\nname = "x"\nlabel = "head"\nkeywords = ["a"]\n', r"default 'legs' is not a class"),
    ('fields = ["PatientName"]\n[[rule]]\nname = "x"\nlabel = "head"\nkeywords = ["a"]\n',
     r"fields \['PatientName'\] must be distinct names from SeriesDescription"),
    ('[[rule]]\nname = "x"\nlabel = "head"\nkeywords = []\n', r"keywords must be a non-empty list"),
    ('[[rule]]\nname = "x"\nlabel = "head"\nkeywords = ["a"]\n[[rule]]\nname = "x"\nlabel = "head"\nkeywords = ["b"]\n',
     r"name 'x' must be a unique"),
    ('colour = 1\n', r"unknown key\(s\) \['colour'\]"),
    ('[[rule]\n', r"not valid TOML"),
    ('version = 1\n', r"no \[\[rule\]\] entries"),
    ('fields = 3\n[[rule]]\nname = "x"\nlabel = "head"\nkeywords = ["a"]\n', r"fields 3 must be distinct names"),
])
def test_bad_rules_files_say_what_is_wrong(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(DatakitError, match=message):
        load_rules(f)
    assert len(CLASSES) == 7


def test_rules_file_not_in_utf8(tmp_path):
    f = tmp_path / "latin1.toml"                          # German keywords saved by a Windows editor
    f.write_bytes('[[rule]]\nname = "head"\nlabel = "head"\nkeywords = ["Schädel"]\n'.encode("cp1252"))
    with pytest.raises(DatakitError, match=r"label rules latin1.toml: not UTF-8 text .*save the file as UTF-8"):
        load_rules(f)


def test_missing_rules_file(tmp_path):
    with pytest.raises(DatakitError, match=r"cannot read label rules .*none.toml"):
        load_rules(tmp_path / "none.toml")
