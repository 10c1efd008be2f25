"""What CovidCT outputs say about the patient: by default no direct identifier, and a documented list of
the quasi-identifiers that stay because the outputs need them.

Default (no ``--include-identifiers``):

* **DICOM SEG** (:func:`strip_patient_and_study`): every attribute of the Patient, Clinical Trial Subject,
  General Study, Patient Study and Clinical Trial Study modules is removed, or left empty where DICOM
  requires it to be present (type 2: PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate,
  StudyTime, ReferringPhysicianName, AccessionNumber, StudyID). Kept so that a viewer / PACS attaches the
  SEG to its CT: :data:`SEG_KEPT`.
* **report.json / report.csv** (:func:`report_for_output`): the input is named by its file name only,
  never its full path, and a DICOM folder only as "DICOM folder" (folders are often named after the
  patient; the series UID identifies the scan); no patient module.
  Kept: :data:`REPORT_KEPT`.

With ``--include-identifiers`` the SEG copies the source's patient and study modules (for PACS storage)
and report.json carries the full input path and the patient name / ID / birth date.
"""

from __future__ import annotations

import copy
import os
from pathlib import PurePath
from typing import Any

#: quasi-identifiers the default DICOM SEG keeps (what a viewer needs to attach it to its CT)
SEG_KEPT = (
    "StudyInstanceUID",
    "SeriesInstanceUID and SOPInstanceUID of every referenced CT slice (ReferencedSeriesSequence, SourceImageSequence)",
    "FrameOfReferenceUID",
    "image geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness)",
    "the SEG's own creation date and time (ContentDate/Time, SeriesDate/Time, InstanceCreationDate/Time)",
)

#: quasi-identifiers report.json / report.csv keep by default
REPORT_KEPT = (
    'input file name (basename only; a DICOM folder is written as "DICOM folder": folder names are often '
    "patient names)",
    "study_uid and series_uid (to find the scan again in the PACS)",
    "acquisition_date (orders the time points of `covidct compare`)",
    "image geometry: size, spacing, origin, direction",
    "created_utc (when the analysis ran)",
)

#: what report.json says instead of the name of an input DICOM folder
DICOM_FOLDER = "DICOM folder"

#: modules whose attributes the default SEG does not copy (except StudyInstanceUID)
_MODULES = ("patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study")
#: Type 2 attributes of the patient and study modules: present in a SEG, empty unless identifiers are asked for
TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)
#: used when highdicom's module tables cannot be read (the common identifying attributes)
_FALLBACK = (
    *TYPE2_KEYWORDS,
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthTime",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientComments",
    "EthnicGroup",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MilitaryRank",
    "Occupation",
    "AdditionalPatientHistory",
    "AdmissionID",
    "ConsultingPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingService",
    "StudyDescription",
    "ReferencedStudySequence",
    "ReferencedPatientSequence",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "MedicalAlerts",
    "Allergies",
    "SmokingStatus",
    "PregnancyStatus",
    "ReasonForVisit",
    "IssuerOfAccessionNumberSequence",
)
KEEP = frozenset({"StudyInstanceUID"})


def _module_keywords(sop_class_uid: str) -> set[str]:
    """Root-level keywords of the patient / study modules of ``sop_class_uid`` (highdicom's DICOM tables)."""
    try:
        from highdicom._standard_utils import get_module_attribute_map, get_sop_class_iod_map

        attributes = get_module_attribute_map()
        get_sop_class_iod_map()[sop_class_uid]  # the IOD is known
        return {str(item["keyword"]) for module in _MODULES for item in attributes[module] if not item["path"]}
    except (ImportError, KeyError, TypeError):
        return set(_FALLBACK)


def patient_and_study_keywords(sop_class_uid: str) -> set[str]:
    """The root-level keywords of the patient and study modules (what ``--include-identifiers`` copies)."""
    return _module_keywords(sop_class_uid)


def strip_patient_and_study(dataset: Any) -> list[str]:
    """Remove (or empty, where DICOM requires presence) the patient and study attributes of ``dataset`` in
    place, keeping StudyInstanceUID. Returns the keywords that held a value."""
    had_value: list[str] = []
    keywords = _module_keywords(str(getattr(dataset, "SOPClassUID", ""))) | set(TYPE2_KEYWORDS)
    for keyword in sorted(keywords - KEEP):
        if keyword not in dataset:
            continue
        if dataset.data_element(keyword).value not in (None, "", b"", []):
            had_value.append(keyword)
        if keyword in TYPE2_KEYWORDS:
            setattr(dataset, keyword, "")
        else:
            delattr(dataset, keyword)
    return had_value


def _basename(source: Any) -> str:
    text = str(source or "").rstrip("/\\")
    return PurePath(text.replace("\\", "/")).name if text else ""


def source_name(source: Any) -> str:
    """How outputs name an input by default: its file name, or "DICOM folder" for a folder."""
    return DICOM_FOLDER if os.path.isdir(str(source or "")) else _basename(source)


def report_for_output(
    report: dict[str, Any], include_identifiers: bool, patient: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report as written to report.json / report.csv: input basename by default (the full path also
    leaves the notes); with ``include_identifiers`` the full path and the patient fields."""
    out = copy.deepcopy(report)
    identity = out.get("input")
    if not isinstance(identity, dict):
        return out
    source = str(identity.get("source") or "")
    if include_identifiers:
        if patient:
            identity["patient"] = dict(patient)
        return out
    identity.pop("patient", None)
    name = _basename(source)
    identity["source"] = source_name(source)
    folder = source[: len(source) - len(name)].rstrip("/\\") if name and source.endswith(name) else ""
    for key in ("notes", "fallbacks"):
        if key in out:
            out[key] = [_without_path(str(n), source, folder, name) for n in out[key] or []]
    return out


def _without_path(text: str, source: str, folder: str, name: str) -> str:
    if source and source != name:
        text = text.replace(source, name)
    if folder:
        text = text.replace(folder, "<input folder>")
    return text
