"""Label values, segment names, colours and standard terminology shared by every output.

Labelmap conventions (fixed, relied on by the CLI contract):

* lungs labelmap: 0 background, 1 right lung, 2 left lung
* infection labelmap: 0 none, 1 ground-glass opacity (GGO), 2 consolidation
"""

from __future__ import annotations

from dataclasses import dataclass

RIGHT_LUNG = 1
LEFT_LUNG = 2
GGO = 1
CONSOLIDATION = 2

LUNG_NAMES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}


@dataclass(frozen=True)
class InfectionClass:
    """One class of the infection labelmap: its label, the key used in report fields (``<key>_ml``) and names."""

    label: int
    key: str
    name: str


#: the infection classes, in label order (their segments, colours and codes are in :data:`SEGMENTS`)
INFECTION_CLASSES: tuple[InfectionClass, ...] = (
    InfectionClass(GGO, "ggo", "Ground-glass opacity"),
    InfectionClass(CONSOLIDATION, "consolidation", "Consolidation"),
)
INFECTION_NAMES = {c.label: c.key for c in INFECTION_CLASSES}


@dataclass(frozen=True)
class LesionType:
    """A lesion type by the share of consolidation voxels in the lesion: ``[min, max)`` of that share."""

    name: str
    min_consolidation: float
    max_consolidation: float


#: lesion types (GGO / mixed / consolidation), checked in order
LESION_TYPES: tuple[LesionType, ...] = (
    LesionType("GGO", 0.0, 0.10),
    LesionType("mixed", 0.10, 0.90 + 1e-12),
    LesionType("consolidation", 0.90 + 1e-12, 1.0 + 1e-9),
)


def lesion_type(consolidation_fraction: float) -> str:
    """The :data:`LESION_TYPES` name of a lesion with this share of consolidation voxels."""
    for kind in LESION_TYPES:
        if kind.min_consolidation <= consolidation_fraction < kind.max_consolidation:
            return kind.name
    return LESION_TYPES[-1].name


@dataclass(frozen=True)
class CodedTerm:
    """A DICOM coded concept (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str

    def slicer_string(self) -> str:
        """Slicer terminology field format: ``scheme^value^meaning``."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class SegmentSpec:
    """One output segment: which labelmap/value it comes from and how it is shown and coded."""

    key: str
    name: str
    source: str  # "lungs", "infection" or "lobes"
    label: int
    color: tuple[float, float, float]  # RGB in 0..1
    opacity_3d: float
    category: CodedTerm
    type: CodedTerm
    modifier: CodedTerm | None = None


_ANATOMICAL_STRUCTURE = CodedTerm("123037004", "SCT", "Anatomical Structure")
_MORPH_ABNORMAL = CodedTerm("49755003", "SCT", "Morphologically Altered Structure")
_LUNG = CodedTerm("39607008", "SCT", "Lung")

SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(
        "right_lung",
        "Right lung",
        "lungs",
        RIGHT_LUNG,
        (0.502, 0.682, 0.502),
        0.3,
        _ANATOMICAL_STRUCTURE,
        _LUNG,
        CodedTerm("24028007", "SCT", "Right"),
    ),
    SegmentSpec(
        "left_lung",
        "Left lung",
        "lungs",
        LEFT_LUNG,
        (0.537, 0.659, 0.835),
        0.3,
        _ANATOMICAL_STRUCTURE,
        _LUNG,
        CodedTerm("7771000", "SCT", "Left"),
    ),
    SegmentSpec(
        "ggo",
        "Ground-glass opacity",
        "infection",
        GGO,
        (0.984, 0.808, 0.259),
        1.0,
        _MORPH_ABNORMAL,
        CodedTerm("45047004", "SCT", "Ground glass opacity"),
    ),
    SegmentSpec(
        "consolidation",
        "Consolidation",
        "infection",
        CONSOLIDATION,
        (0.863, 0.196, 0.184),
        1.0,
        _MORPH_ABNORMAL,
        CodedTerm("95436008", "SCT", "Lung consolidation"),
    ),
)


def segment(key: str) -> SegmentSpec:
    """Look a segment spec up by its key."""
    for spec in SEGMENTS:
        if spec.key == key:
            return spec
    raise KeyError(key)


# ----------------------------------------------------------------------------------------------- lobes
# lobes labelmap (lobes.nii.gz): 0 background, 1 RUL, 2 RML, 3 RLL (right lung), 4 LUL, 5 LLL (left lung)
RUL, RML, RLL, LUL, LLL = 1, 2, 3, 4, 5
LOBE_NAMES = {RUL: "RUL", RML: "RML", RLL: "RLL", LUL: "LUL", LLL: "LLL"}
LOBES_OF_LUNG = {RIGHT_LUNG: (RUL, RML, RLL), LEFT_LUNG: (LUL, LLL)}

LOBE_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(
        "rul",
        "Right upper lobe",
        "lobes",
        RUL,
        (0.694, 0.478, 0.396),
        0.3,
        _ANATOMICAL_STRUCTURE,
        CodedTerm("45653009", "SCT", "Upper lobe of right lung"),
    ),
    SegmentSpec(
        "rml",
        "Right middle lobe",
        "lobes",
        RML,
        (0.435, 0.722, 0.824),
        0.3,
        _ANATOMICAL_STRUCTURE,
        CodedTerm("72481006", "SCT", "Middle lobe of right lung"),
    ),
    SegmentSpec(
        "rll",
        "Right lower lobe",
        "lobes",
        RLL,
        (0.890, 0.761, 0.510),
        0.3,
        _ANATOMICAL_STRUCTURE,
        CodedTerm("266005", "SCT", "Lower lobe of right lung"),
    ),
    SegmentSpec(
        "lul",
        "Left upper lobe",
        "lobes",
        LUL,
        (0.627, 0.557, 0.804),
        0.3,
        _ANATOMICAL_STRUCTURE,
        CodedTerm("44714003", "SCT", "Upper lobe of left lung"),
    ),
    SegmentSpec(
        "lll",
        "Left lower lobe",
        "lobes",
        LLL,
        (0.557, 0.784, 0.463),
        0.3,
        _ANATOMICAL_STRUCTURE,
        CodedTerm("90572001", "SCT", "Lower lobe of left lung"),
    ),
)
