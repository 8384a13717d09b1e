"""What a synthetic cohort holds: patients, studies, series and the traps of real exports.

    plan = plan_patient(seed, index, n_patients, matrix)   # PatientPlan: header fields and SeriesSpec list

Only metadata is decided here (cheap, deterministic from the seed, the patient index
and the number of patients), so writing can run in parallel. Traps are spread over
patients round-robin and study regions cycle through the 7 classes, so a cohort of a
few patients still contains every trap and every class (TRAPS lists the traps; with
fewer patients than traps some patients carry several).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from datakit.synth.phantoms import Body

CLASSES = ("head", "thorax", "abdomen", "extremities", "pelvis", "spine", "other")

# Transfer syntaxes the generator writes (pydicom + plugins encode all but JPEG lossless, done here).
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"     # encoded by datakit.synth.jpeg_lossless (pydicom cannot)
SPECIAL_SYNTAXES = (JPEG_LOSSLESS, JPEG_LS, JPEG_2000, RLE, DEFLATED, EXPLICIT_BE, IMPLICIT_LE)
OTHER_SYNTAXES = SPECIAL_SYNTAXES[1:]
# --syntax-mix: "traps" (the default) gives one volume per special syntax, the rest explicit VR LE;
# "realistic" gives every volume its syntax by these shares of the slices, the mix of a typical PACS
# export (mostly uncompressed, JPEG lossless the common compressed syntax, the others rare); see
# apply_syntax_mix.
SYNTAX_MIXES = ("traps", "realistic")
REALISTIC_MIX = ((EXPLICIT_LE, 0.80), (JPEG_LOSSLESS, 0.15), (None, 0.05))   # None: one of OTHER_SYNTAXES

# Study texts per class: (German, English) choices. "other" studies are multi-region or say nothing usable.
STUDY_TEXT = {
    "head": (("CT Schädel nativ", "CCT", "CT Kopf"), ("CT Head w/o contrast", "CT Brain")),
    "thorax": (("CT Thorax mit KM", "CT Lunge nativ"), ("CT Chest with contrast", "CT Thorax")),
    "abdomen": (("CT Abdomen mit KM", "CT Oberbauch", "CT Leber 3-phasig"), ("CT Abdomen", "CT Liver triphasic")),
    "pelvis": (("CT Becken", "CT Hüfte links"), ("CT Pelvis", "CT Hip right")),
    "extremities": (("CT Knie rechts", "CT Kniegelenk links"), ("CT Knee right", "CT Knee left")),
    "spine": (("CT LWS", "CT Lendenwirbelsäule"), ("CT Lumbar Spine", "CT L-Spine")),
    "other": (("CT Polytrauma", "Ganzkörper-CT", "CT Thorax/Abdomen/Becken"),
              ("CT Chest/Abdomen/Pelvis", "Whole Body Trauma")),
}
# Series texts that carry no anatomy (the label must then come from another field) ...
NEUTRAL_SERIES = (("Weichteil 5.0 B30f", "Knochen 1.0 B60s", "Axial 3mm", "nativ 2.0"),
                  ("Soft Tissue 5mm", "Bone 1mm", "Axial 3.0", "Routine 2.0"))
# ... and anatomical ones per class.
ANATOMY_SERIES = {
    "head": (("Schädel 4.0 H30s", "Hirn 5mm"), ("Head 5mm", "Brain 4.0")),
    "thorax": (("Thorax 5.0 B30f", "Lunge 1.5 B70f"), ("Chest 5mm", "Lung 1.25")),
    "abdomen": (("Abdomen venös 3mm", "Leber portalvenös"), ("Abdomen portal venous", "Liver 3mm")),
    "pelvis": (("Becken 3.0", "Becken Knochen"), ("Pelvis 3mm", "Pelvis bone")),
    "extremities": (("Knie 1.0 Knochen", "Kniegelenk Weichteil"), ("Knee bone 1mm", "Knee soft tissue")),
    "spine": (("LWS 2.0 Knochen", "Wirbelsäule sagittal-axial"), ("L-Spine bone", "Spine 2mm")),
    "other": (("Polytrauma 3mm", "Ganzkörper 5mm"), ("Trauma 3mm", "Whole body 5mm")),
}
BODY_PART = {"head": "HEAD", "thorax": "CHEST", "abdomen": "ABDOMEN", "pelvis": "PELVIS",
             "extremities": "KNEE", "spine": "LSPINE", "other": None}
PHANTOM = {"head": "head", "thorax": "thorax", "abdomen": "abdomen", "pelvis": "pelvis",
           "extremities": "extremities", "spine": "spine", "other": "trunk"}
FOV_MM = {"head": 240, "thorax": 400, "abdomen": 420, "pelvis": 420, "extremities": 170, "spine": 160, "other": 450}

# Traps of real exports, each given to patient (index % n_patients); what scan should say is in SeriesSpec.expect.
TRAPS = ("short", "resent", "copy", "dose-sc", "dose-sr", "mr", "mpr-coronal", "dose-info", "multi-frame",
         "truncated") + tuple(f"ts:{ts}" for ts in SPECIAL_SYNTAXES)

# Traps that are one series of their own: kind -> (SeriesDescription, files, reject code scan should give).
SINGLE_SERIES_TRAPS = {
    "mr": ("t2_tse_tra", 4, "not-ct"),
    "mpr-coronal": ("MPR cor 3mm", 8, "not-axial"),
    "dose-sc": ("Dose Report", 1, "secondary-capture"),
    "dose-sr": ("Radiation Dose Information", 1, "not-ct"),
    "dose-info": ("Dose Info", 1, "derived"),
    "multi-frame": ("Enhanced CT", 1, "multi-frame"),
}

FIRST_NAMES = ("Max", "Erika", "Hans", "Anna", "Jürgen", "Sophie", "John", "Mary", "Peter", "Grete", "Özlem", "Lukas")
LAST_NAMES = ("Mustermann", "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Smith", "Doe", "Wagner",
              "Becker", "Hoffmann", "Schäfer")
INSTITUTIONS = ("Klinikum Musterstadt", "Universitätsklinikum Beispielburg", "St. Mary's General Hospital")
PHYSICIANS = ("Dr. med. Weiß^Klaus", "House^Gregory^^Dr.", "Quinn^Michaela")


def uid(seed: int, *parts) -> str:
    """A deterministic UID under the 2.25 (UUID-derived) root: same seed and parts, same UID."""
    digest = hashlib.sha256(("/".join(map(str, (seed,) + parts))).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


@dataclass
class SeriesSpec:
    key: str                      # unique within the cohort, e.g. "p003-st1-se2"
    uid: str
    study: "StudySpec"
    number: int
    # volume | short | resent | scout | mr | mpr-coronal | dose-sc | dose-sr | dose-info | multi-frame
    kind: str
    label: str                    # intended class (the study's class)
    phantom: str
    description: str
    slices: int
    thickness: float
    fov: float
    transfer_syntax: str = EXPLICIT_LE
    signed: bool = True           # int16 with intercept 0, or uint16 with BitsStored 12 and intercept -1024
    descending: bool = False      # instance 1 at the top (head-first scans often are)
    expect: str | None = None     # the reject code scan should give every file, or None for candidates
    duplicate_of: str | None = None
    rows: int = 0
    cols: int = 0
    noise_seed: int = 0          # pixels (noise, gas bubbles) derive from it: re-sent series share it


@dataclass
class StudySpec:
    uid: str
    number: int
    label: str
    description: str
    protocol: str
    body_part: str | None
    date: str
    accession: str
    institution: str
    physician: str
    series: list = field(default_factory=list)


@dataclass
class PatientPlan:
    index: int
    patient_id: str
    name: str
    birth_date: str
    sex: str
    german: bool
    layout: int
    body: Body
    studies: list = field(default_factory=list)
    traps: tuple = ()

    @property
    def phi(self) -> list[str]:
        """Strings that must never appear in any shareable output."""
        values = {self.patient_id, self.name, self.birth_date}
        for st in self.studies:
            values |= {st.accession, st.institution, st.physician}
        return sorted(values)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def apply_syntax_mix(plans: list[PatientPlan]) -> None:
    """Give every volume series of the cohort its transfer syntax under the realistic mix, in place.
    Volumes are taken patient-interleaved (every patient's first volume, then every second, ...) and
    each goes to the syntax furthest below its share of the slices so far, so any cohort of a few
    dozen volumes holds the shares of REALISTIC_MIX to within one volume; the "other" share cycles
    through OTHER_SYNTAXES. Deterministic: it depends on the plans only."""
    per_patient = [[s for st in p.studies for s in st.series if s.kind == "volume"] for p in plans]
    order = [vols[k] for k in range(max(map(len, per_patient), default=0)) for vols in per_patient if k < len(vols)]
    done = dict.fromkeys(range(len(REALISTIC_MIX)), 0)
    others = 0
    for spec in order:
        total = sum(done.values()) + spec.slices
        pick = max(done, key=lambda j: (REALISTIC_MIX[j][1] * total - done[j], -j))
        done[pick] += spec.slices
        ts = REALISTIC_MIX[pick][0]
        if ts is None:
            ts, others = OTHER_SYNTAXES[others % len(OTHER_SYNTAXES)], others + 1
        spec.transfer_syntax = ts


def plan_patient(seed: int, index: int, n_patients: int, matrix: int, syntax_mix: str = "traps") -> PatientPlan:
    """`syntax_mix` "traps" (the default: every cohort as before the option existed, byte for byte) gives
    one volume per special syntax; "realistic" leaves those out, for apply_syntax_mix to set every volume's."""
    rng = np.random.default_rng([seed, index])
    german = bool(rng.random() < 0.5)
    lang = 0 if german else 1
    first, last = _pick(rng, FIRST_NAMES), _pick(rng, LAST_NAMES)
    plan = PatientPlan(
        index=index, patient_id=f"PID{int(rng.integers(10**7, 10**8))}", name=f"{last}^{first}",
        birth_date=f"{int(rng.integers(1930, 2005))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex=_pick(rng, ("F", "M")), german=german, layout=index % 4, body=Body.random(rng),
        traps=tuple(t for i, t in enumerate(TRAPS) if i % n_patients == index))
    n_studies = 1 + int(rng.random() < 0.4)
    if n_patients < len(CLASSES):                               # small cohorts still hold every class
        n_studies = max(n_studies, -(-len(CLASSES) // n_patients))
    for s in range(n_studies):
        label = CLASSES[(index + s * n_patients) % len(CLASSES)]
        st = StudySpec(
            uid=uid(seed, index, "study", s), number=s + 1, label=label,
            description=_pick(rng, STUDY_TEXT[label][lang]), protocol="",
            body_part=BODY_PART[label] if rng.random() < 0.6 else None,
            date=f"20{int(rng.integers(15, 25))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            accession=f"A{int(rng.integers(10**9, 10**10))}", institution=_pick(rng, INSTITUTIONS),
            physician=_pick(rng, PHYSICIANS))
        st.protocol = f"{st.description} {'Standard' if german else 'Routine'}" if rng.random() < 0.5 else ""
        plan.studies.append(st)
        n_series = 1 + int(rng.random() < 0.5)
        for k in range(n_series):
            anatomical = rng.random() < 0.5
            texts = ANATOMY_SERIES[label] if anatomical else NEUTRAL_SERIES
            _add(st, seed, plan, "volume", description=_pick(rng, texts[lang]), rng=rng, matrix=matrix,
                 slices=int(rng.integers(30, 61)))
        if rng.random() < 0.7:
            _add(st, seed, plan, "scout", description="Topogramm 0.6 T20s" if german else "Scout", rng=rng,
                 matrix=matrix, slices=int(rng.integers(1, 3)), expect="scout")
    _add_traps(plan, seed, rng, matrix, syntax_traps=syntax_mix == "traps")
    return plan


def _add(st: StudySpec, seed: int, plan: PatientPlan, kind: str, *, description: str, rng, matrix: int,
         slices: int, expect: str | None = None, **kw) -> SeriesSpec:
    number = len(st.series) + 1
    label = kw.pop("label", st.label)
    rows = cols = matrix
    if label == "extremities" and kind == "volume":
        rows = matrix * 3 // 4                                  # a non-square matrix, as some knee protocols use
    spec = SeriesSpec(
        key=f"p{plan.index:03d}-st{st.number}-se{number}", uid=uid(seed, plan.index, st.number, "series", number),
        study=st, number=number, kind=kind, label=label, phantom=PHANTOM[label], description=description,
        slices=slices, thickness=float(_pick(rng, (1.0, 1.5, 2.0, 3.0, 5.0))), fov=float(FOV_MM[label]),
        signed=bool(rng.random() < 0.5), descending=bool(rng.random() < 0.3), expect=expect, rows=rows, cols=cols,
        noise_seed=int(rng.integers(2**31)))
    for name, value in kw.items():
        setattr(spec, name, value)
    st.series.append(spec)
    return spec


def _add_traps(plan: PatientPlan, seed: int, rng, matrix: int, syntax_traps: bool = True) -> None:
    st = plan.studies[0]
    volumes = [s for s in st.series if s.kind == "volume"]
    de = plan.german
    for trap in plan.traps:
        if trap == "short":
            _add(st, seed, plan, "short", description="Weichteil 5mm" if de else "Soft tissue 5mm", rng=rng,
                 matrix=matrix, slices=int(rng.integers(10, 25)))
        elif trap == "resent":
            src = volumes[0]
            _add(st, seed, plan, "resent", description=src.description, rng=rng, matrix=matrix, slices=src.slices,
                 duplicate_of=src.key, thickness=src.thickness, fov=src.fov, signed=src.signed,
                 descending=src.descending, noise_seed=src.noise_seed, rows=src.rows, cols=src.cols)
        elif trap in SINGLE_SERIES_TRAPS:
            description, slices, expect = SINGLE_SERIES_TRAPS[trap]
            _add(st, seed, plan, trap, description=description, rng=rng, matrix=matrix, slices=slices, expect=expect)
        elif trap.startswith("ts:") and syntax_traps:
            # One volume per special syntax; a patient with more such traps than volumes gets extra volumes.
            plain = [v for v in volumes if v.transfer_syntax == EXPLICIT_LE]
            target = plain[0] if plain else _add(
                st, seed, plan, "volume", description=_pick(rng, NEUTRAL_SERIES[0 if de else 1]), rng=rng,
                matrix=matrix, slices=int(rng.integers(30, 41)))
            target.transfer_syntax = trap[3:]
            if target not in volumes:
                volumes.append(target)
        # "copy" and "truncated" act on written files; see datakit.synth.write.
