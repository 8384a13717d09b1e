"""The task registry: what each downstream task trains on, with which head, loss,
metric and hyperparameters. A new task is a new entry (here, or in a TOML file given
with `--tasks-file`), never new code in the training loop.

    task = get_task("lits")
    hp = task.hyperparameters(fraction=0.1)        # batch_size, lr, optimizer, ... for that fraction

Defaults are the paper's Table ST4 (PAPER.md); every field can be overridden on the
`trainer.finetune` command line. Fraction-dependent rows (`by_fraction`): the task's
own values are the row of fraction 1.0, and the row nearest to the run's fraction on
a log scale applies (0.5 -> the 1.0 row, 0.05 -> the 0.1 row, 0.001 -> the 0.01 row
when the table stops at 1%; a tie goes to the larger fraction).

Class weights are given per position (`[1, 3, 10]`: one per class, in the dataset's
class order) or by name (`{"No Finding": 1e-3, "*": 1}`: `*` for every other class;
a name the dataset lacks is skipped in a built-in default, an error when a user gives
it). The weight vector actually used is written to the run's config.json.

This module imports no torch: `tlx sweep` reads it to plan runs.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import TrainerError

KINDS = ("classification", "multilabel", "segmentation")
SEG_LOSSES = ("ce", "dice", "dice+ce")           # trainer.task_losses (this module imports no torch)
OPTIMIZERS = ("adamw", "adam", "sgd", "lars")
AUGMENTS = ("none", "flip", "crop-flip")
SETTINGS = ("finetune", "linear", "lp-ft")
# Weight decay when neither the task nor --weight-decay says (the paper gives none), by preset
# (--weight-decay-preset): `study`, the default, takes the study's fine-tuning configs where they
# give one for the task and optimizer (STUDY_WEIGHT_DECAY) and tlx's value otherwise; `tlx` always
# takes tlx's (DEFAULT_WEIGHT_DECAY: AdamW's PyTorch default, the usual LARS value of SimCLR
# evaluation recipes, torch's 0 for Adam and SGD), chosen before the study's configs were read.
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2, "lars": 1e-6, "adam": 0.0, "sgd": 0.0}
STUDY_WEIGHT_DECAY = {("radnet", "lars"): 1e-4, ("imagenet", "lars"): 1e-6, ("chestxray", "adamw"): 1e-6,
                      ("lits", "adamw"): 1e-6, ("brats", "adamw"): 1e-5}
WEIGHT_DECAY_PRESETS = ("study", "tlx")
HYPERPARAMETERS = ("batch_size", "lr", "optimizer", "weight_decay", "epochs", "decay")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str                                  # classification | multilabel | segmentation
    data_kinds: tuple[str, ...]                # manifest "kind"s it trains on
    metric: str                                # validation metric that picks the best epoch
    epochs: int
    batch_size: int
    lr: float
    optimizer: str                             # adamw | lars
    decay: float                               # lr multiplied by this after every epoch
    weight_decay: float | None = None          # None: default_weight_decay (the preset's)
    class_weights: tuple[float, ...] | dict[str, float] = ()   # () = equal
    by_fraction: dict[float, dict] = field(default_factory=dict)
    augment: str = "none"                      # none | flip | crop-flip (random resized crop + flip)
    regions: dict[str, tuple[str, ...]] = field(default_factory=dict)   # segmentation: unions of classes scored too
    exclude_from_mean: tuple[str, ...] = ()    # multilabel: labels left out of mean_auc
    auc_labels: tuple[str, ...] = ()           # multilabel: the labels mean_auc averages (() = all of them)
    seg_loss: str = "ce"                       # segmentation: ce | dice | dice+ce
    description: str = ""

    def __post_init__(self):
        _check(self.kind, KINDS, f"task {self.name!r} kind")
        _check(self.optimizer, OPTIMIZERS, f"task {self.name!r} optimizer")
        _check(self.augment, AUGMENTS, f"task {self.name!r} augment")
        _check(self.seg_loss, SEG_LOSSES, f"task {self.name!r} seg_loss")
        for frac, row in self.by_fraction.items():
            unknown = set(row) - set(HYPERPARAMETERS)
            if unknown or not 0 < frac <= 1:
                raise TrainerError(f"task {self.name!r} by_fraction row {frac}: fraction must be in (0, 1] and "
                                   f"keys in {', '.join(HYPERPARAMETERS)}; got {sorted(row)}")

    def hyperparameters(self, fraction: float, fill_weight_decay: bool = True) -> dict:
        """batch_size, lr, optimizer, weight_decay, epochs, decay for a data fraction (weight_decay None where the
        task does not set it and `fill_weight_decay` is False; else the study preset's default)."""
        if not 0 < fraction <= 1:  # before its logarithm below
            raise TrainerError(f"--fraction {fraction} must be in (0, 1] (1.0 = all training data)")
        hp = {k: getattr(self, k) for k in HYPERPARAMETERS}
        rows = {1.0: {}, **self.by_fraction}
        nearest = min(rows, key=lambda f: (abs(math.log(f) - math.log(fraction)), -f))
        hp.update(rows[nearest])
        if hp["weight_decay"] is None and fill_weight_decay:
            hp["weight_decay"] = default_weight_decay(self.name, hp["optimizer"], "study")[0]
        return hp


    def check_classes(self, classes: list[str]) -> None:
        """TrainerError when the dataset's classes cannot give the task's metric: `auc` needs two classes,
        `auc_labels` must all be labels of the dataset."""
        if self.metric == "auc" and len(classes) != 2:
            raise TrainerError(f"task {self.name} scores auc, which needs two classes; the dataset has "
                               f"{len(classes)} ({', '.join(classes)})")
        unknown = [c for c in self.auc_labels if c not in classes]
        if unknown:
            raise TrainerError(f"task {self.name} averages the AUC of labels {unknown} that the dataset lacks "
                               f"(its classes: {', '.join(classes)}); convert it with them or pick another task")

    def mean_excludes(self, classes: list[str]) -> tuple[str, ...]:
        """The labels left out of mean_auc: exclude_from_mean, and those outside auc_labels."""
        outside = tuple(c for c in classes if self.auc_labels and c not in self.auc_labels)
        return tuple(dict.fromkeys(self.exclude_from_mean + outside))


def default_weight_decay(task: str, optimizer: str, preset: str) -> tuple[float, str]:
    """(weight decay, where it comes from: "study" or "tlx") for a task that does not set one."""
    _check(preset, WEIGHT_DECAY_PRESETS, "--weight-decay-preset")
    if preset == "study" and (task, optimizer) in STUDY_WEIGHT_DECAY:
        return STUDY_WEIGHT_DECAY[task, optimizer], "study"
    return DEFAULT_WEIGHT_DECAY[optimizer], "tlx"


def _check(value, allowed, what: str) -> None:
    if value not in allowed:
        raise TrainerError(f"{what} {value!r} is not one of: {', '.join(allowed)}")


CHEXPERT_5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _cxr(name: str, description: str, **kw) -> Task:
    """A chest X-ray task of `tlx convert cxr` data: Irvin et al.'s CheXpert recipe (Adam, lr 1e-4, no decay,
    batch 16, 3 epochs), sigmoid + masked BCE, mean AUC; "No Finding" never in the mean."""
    return Task(name, "multilabel", ("multilabel",), "mean_auc", epochs=3, batch_size=16, lr=1e-4, optimizer="adamw",
                decay=1.0, weight_decay=0.0, exclude_from_mean=("No Finding",), description=description, **kw)


def _seg2d(name: str, description: str) -> Task:
    """A 2-D segmentation task of `tlx convert image-mask` data: Dice + CE, Dice over the test split's pixels."""
    return Task(name, "segmentation", ("segmentation",), "dice_mean_global", epochs=50, batch_size=16, lr=1e-3,
                optimizer="adamw", decay=0.97, seg_loss="dice+ce", augment="flip", description=description)


def _binary(name: str, description: str, **kw) -> Task:
    """A two-class task scored by the AUC of its second class."""
    return Task(name, "classification", ("image-classification",), "auc", epochs=20, batch_size=64, lr=1e-4,
                optimizer="adamw", decay=0.97, description=description, **kw)


def _lars_then_adamw(tenth: tuple[int, float]) -> dict[float, dict]:
    """Table ST4's regimes below all data: 10% with LARS, 1% and below with AdamW 1e-4."""
    return {0.1: {"batch_size": tenth[0], "lr": tenth[1], "optimizer": "lars"},
            0.01: {"batch_size": 256, "lr": 1e-4, "optimizer": "adamw"}}


BUILTIN: dict[str, Task] = {t.name: t for t in [
    Task("radnet", "classification", ("ct-slices",), "accuracy", epochs=100,
         batch_size=4096, lr=1e-2, optimizer="lars", decay=0.97,
         by_fraction=_lars_then_adamw((1024, 5e-3)),
         description="anatomical classification of CT slices (tlx shard datasets); accuracy"),
    Task("chestxray", "multilabel", ("multilabel",), "mean_auc", epochs=50,
         batch_size=128, lr=5e-4, optimizer="adamw", decay=0.97,
         class_weights={"No Finding": 1e-3, "*": 1.0}, exclude_from_mean=("No Finding",),
         description="ChestX-ray8-style multi-label findings; sigmoid + BCE; mean AUC over labels"),
    Task("lits", "segmentation", ("segmentation",), "dice_mean", epochs=50,
         batch_size=128, lr=2e-4, optimizer="adamw", decay=0.97, class_weights=(1.0, 3.0, 10.0),
         description="LiTS-style liver and lesion segmentation (background, liver, tumor); Dice"),
    Task("brats", "segmentation", ("segmentation",), "dice_mean", epochs=50,
         batch_size=128, lr=1e-3, optimizer="adamw", decay=0.95, class_weights=(1.0, 5.0, 5.0, 5.0),
         regions={"whole_tumor": ("necrotic", "edema", "enhancing"), "tumor_core": ("necrotic", "enhancing"),
                  "enhancing_tumor": ("enhancing",)},
         description="BraTS-style brain tumour segmentation, 3 of 4 MRI channels; Dice per class and region"),
    Task("imagenet", "classification", ("image-classification",), "accuracy", epochs=100,
         batch_size=4096, lr=4.8, optimizer="lars", decay=0.97, augment="crop-flip",
         by_fraction=_lars_then_adamw((1024, 2.4)),
         description="natural-image classification on jpg/cls shards (ImageNet-1k); accuracy"),
    Task("imagenet-100", "classification", ("image-classification",), "accuracy", epochs=100,
         batch_size=1024, lr=2.4, optimizer="lars", decay=0.97, augment="crop-flip",
         by_fraction={0.1: {"batch_size": 256, "lr": 1e-4, "optimizer": "adamw"}},
         description="ImageNet-100 (a 100-class subset: `tlx convert class-folder --classes`); accuracy"),
    Task("imagenet-10", "classification", ("image-classification",), "accuracy", epochs=100,
         batch_size=256, lr=1e-4, optimizer="adamw", decay=0.97, augment="crop-flip",
         by_fraction={0.01: {"batch_size": 64, "lr": 1e-4, "optimizer": "adamw"}},
         description="ImageNet-10 (10-class subset); the table gives 10% and 1% only, all data uses the 10% row"),
    _cxr("chexpert", "CheXpert (tlx convert cxr --preset chexpert); mean AUC over the 5 competition labels",
         auc_labels=CHEXPERT_5),
    _cxr("mimic-cxr", "MIMIC-CXR-JPG with CheXpert labels; mean AUC over the 5 CheXpert competition labels",
         auc_labels=CHEXPERT_5),
    _cxr("padchest", "PadChest findings; mean AUC over every label"),
    Task("nih", "multilabel", ("multilabel",), "mean_auc", epochs=50, batch_size=128, lr=5e-4, optimizer="adamw",
         decay=0.97, class_weights={"No Finding": 1e-3, "*": 1.0}, exclude_from_mean=("No Finding",),
         description="ChestX-ray14 of tlx convert cxr --preset nih: the chestxray task's recipe (No Finding 1e-3)"),
    _cxr("cxr-superset", "a merged chest X-ray superset (tlx convert cxr --merge); missing labels masked"),
    _seg2d("siim-acr", "SIIM-ACR pneumothorax segmentation (DICOM + RLE); Dice"),
    _seg2d("montgomery", "Montgomery lung segmentation (left and right lung united); Dice"),
    _seg2d("drive", "DRIVE retinal vessel segmentation (RGB fundus); Dice"),
    _binary("pcam", "PatchCamelyon: tumor in a 96x96 lymph node patch; AUC", augment="flip"),
    _binary("cbis-ddsm", "CBIS-DDSM mammograms: malignant or benign; AUC", augment="flip"),
    Task("mrnet", "multilabel", ("multilabel",), "mean_auc", epochs=20, batch_size=32, lr=1e-4, optimizer="adamw",
         decay=0.97, description="MRNet knee MRI (chosen sagittal slices): abnormal, ACL, meniscus tears; mean AUC"),
]}


def load_tasks_file(path: Path | str) -> dict[str, Task]:
    """Tasks declared in a TOML file, one table per task: `[tasks.<name>]` with Task's fields."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"--tasks-file {path}: no such file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainerError(f"--tasks-file {path}: not valid TOML ({exc})") from None
    fields = {f.name for f in dataclasses.fields(Task)} - {"name"}
    tasks = {}
    for name, entry in doc.get("tasks", {}).items():
        unknown = set(entry) - fields
        if unknown:
            raise TrainerError(f"{path}: task {name!r} has unknown fields {sorted(unknown)}; "
                               f"known: {', '.join(sorted(fields))}")
        entry = dict(entry)
        for key in ("data_kinds", "exclude_from_mean", "auc_labels"):
            if key in entry:
                entry[key] = tuple(entry[key])
        if isinstance(entry.get("class_weights"), list):
            entry["class_weights"] = tuple(entry["class_weights"])
        if "by_fraction" in entry:
            entry["by_fraction"] = {float(k): v for k, v in entry["by_fraction"].items()}
        if "regions" in entry:
            entry["regions"] = {k: tuple(v) for k, v in entry["regions"].items()}
        try:
            tasks[name] = Task(name=name, **entry)
        except TypeError as exc:  # a required field missing
            raise TrainerError(f"{path}: task {name!r}: {exc}") from exc
    return tasks


def get_task(name: str, tasks_file: Path | str | None = None) -> Task:
    registry = dict(BUILTIN)
    if tasks_file:
        registry.update(load_tasks_file(tasks_file))
    if name not in registry:
        raise TrainerError(f"--task {name!r} is not one of: {', '.join(registry)}")
    return registry[name]


def resolve_class_weights(spec, classes: list[str], strict: bool) -> list[float]:
    """A per-class weight list from a spec (tuple by position, dict by name, empty = equal).
    `strict`: names the dataset lacks are an error (user input) rather than skipped (defaults)."""
    if not spec:
        return [1.0] * len(classes)
    if isinstance(spec, dict):
        unknown = [n for n in spec if n != "*" and n not in classes]
        if unknown and strict:
            raise TrainerError(f"--class-weights names {unknown} that are not classes of the dataset: "
                               f"{', '.join(classes)}")
        return [float(spec.get(c, spec.get("*", 1.0))) for c in classes]
    if len(spec) != len(classes):
        raise TrainerError(f"class weights {list(spec)} give {len(spec)} values for the dataset's "
                           f"{len(classes)} classes ({', '.join(classes)})")
    return [float(w) for w in spec]


def parse_class_weights(text: str) -> tuple[float, ...] | dict[str, float]:
    """`1,3,10` (by position) or `background=1,*=5` (by name) from the command line."""
    try:
        if "=" in text:
            return {k.strip(): float(v) for k, v in (item.rsplit("=", 1) for item in text.split(","))}
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TrainerError(f"--class-weights {text!r} must be numbers by position (1,3,10) "
                           f"or by name (background=1,*=5)") from None


def format_fraction(fraction: float) -> str:
    """The fraction as it appears in run directory names: 1.0, 0.1, 0.01, 0.001, 1e-05."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1 and math.isfinite(fraction)):
        raise TrainerError(f"fraction {fraction!r} must be in (0, 1]")
    return repr(float(fraction))


def run_dir(out: Path | str, task: str, init: str, setting: str, fraction: float, seed: int,
            shots: int | None = None, fold: tuple[int, int] | None = None) -> Path:
    """The default run directory of docs/run-format.md: <out>/<task>/<init>/<setting>/frac-<f>/seed-<n>;
    `shots-<K>` in place of `frac-<f>` with --shots, and `seed-<n>/fold-<i>-of-<K>` with --folds (fold = (i, K))."""
    for what, value in (("task", task), ("init name", init), ("setting", setting)):
        if not value or "/" in value or value in (".", ".."):
            raise TrainerError(f"{what} {value!r} cannot name a directory (no '/', not empty)")
    subset = f"shots-{int(shots)}" if shots is not None else f"frac-{format_fraction(fraction)}"
    path = Path(out) / task / init / setting / subset / f"seed-{int(seed)}"
    return path / f"fold-{int(fold[0])}-of-{int(fold[1])}" if fold is not None else path
