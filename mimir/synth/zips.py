"""Writing a synthetic study as a UK Biobank field-20201 zip, with its truth file.

``generate_subject`` writes one zip shaped like a real neck-to-knee Dixon zip
(``{eid}_20201_2_0.zip``: six stations x four series of 2-D DICOM slices plus
the quirky manifest, see ``docs/image-contract.md``) and a ``{eid}.truth.json``
with the values a model should predict. Same arguments, same bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from mimir.errors import UsageError
from mimir.synth import dicom_writer as dw
from mimir.synth.study import PIXEL_SPACING_TEXT, SynthStudy, SynthSubject, build_study, default_eid
from mimir.utils.atomic import write_bytes, write_text

__all__ = ["MANIFEST_HEADER", "study_members", "study_zip_bytes", "generate_subject", "generate"]

_IMAGE_TYPE = {"in": "IN", "opp": "OPP", "F": "F", "W": "W"}
_ECHO_TIME = {"in": "4.77", "opp": "2.39", "F": "2.39", "W": "2.39"}
#: The manifest's header row, spelling ("discription") as in real zips.
MANIFEST_HEADER = ("filename", "patientid", "series discription", "studyid", "study date",
                   "series number", "instance number")


def _manifest_rows(study: SynthStudy) -> list[list[str]]:
    stamp = _dt.datetime.strptime(study.study_date + study.study_time[:6], "%Y%m%d%H%M%S")
    hour12 = stamp.hour % 12 or 12
    ampm = "AM" if stamp.hour < 12 else "PM"
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[stamp.month - 1]
    when = f"{month} {stamp.day}, {stamp.year} {hour12}:{stamp.minute:02d}:{stamp.second:02d} {ampm}"
    rows = []
    for s in study.series:
        for k, uid in enumerate(s.instance_uids):
            rows.append([f"{uid}.dcm", study.patient_id, s.description, study.study_uid, when,
                         str(s.number), str(k + 1)])
    return rows


def study_members(study: SynthStudy) -> list[tuple[str, bytes]]:
    """Zip members ``(name, bytes)`` of ``study`` in their (seeded, shuffled) order."""
    members: list[tuple[str, bytes]] = []
    if study.variant != "no_dicom":
        for s in study.series:
            rows, cols = s.pixels.shape[1:]
            common: dict[str, dw.Value] = {
                "SpecificCharacterSet": "ISO_IR 100",
                "ImageType": ["ORIGINAL", "PRIMARY", "M", "DIXON", _IMAGE_TYPE[s.kind]],
                "InstanceCreationDate": study.study_date,
                "InstanceCreationTime": s.time,
                "SOPClassUID": dw.MR_IMAGE_STORAGE,
                "StudyDate": study.study_date, "SeriesDate": study.study_date,
                "AcquisitionDate": study.study_date, "ContentDate": study.study_date,
                "StudyTime": study.study_time, "SeriesTime": s.time,
                "AcquisitionTime": s.time, "ContentTime": s.time,
                "AccessionNumber": "", "Modality": "MR", "Manufacturer": "SIEMENS",
                "ReferringPhysicianName": "", "SeriesDescription": s.description,
                "ManufacturerModelName": "Aera", "PatientName": study.patient_id,
                "PatientID": study.patient_id, "PatientBirthDate": "", "PatientSex": "",
                "BodyPartExamined": "WHOLEBODY", "ScanningSequence": "GR", "SequenceVariant": "SP",
                "ScanOptions": "", "MRAcquisitionType": "3D", "SequenceName": "*fl3d2",
                "SliceThickness": s.spacing, "RepetitionTime": "6.69", "EchoTime": _ECHO_TIME[s.kind],
                "NumberOfAverages": "1", "ImagingFrequency": "63.68", "ImagedNucleus": "1H",
                "MagneticFieldStrength": "1.5", "SpacingBetweenSlices": s.spacing,
                "SoftwareVersions": "syngo MR D13", "ProtocolName": s.description.rsplit("_", 1)[0],
                "FlipAngle": "10", "PatientPosition": "HFS",
                "StudyInstanceUID": study.study_uid, "SeriesInstanceUID": s.uid, "StudyID": "1",
                "SeriesNumber": s.number, "AcquisitionNumber": 1,
                "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
                "FrameOfReferenceUID": study.frame_uid,
                "PositionReferenceIndicator": "", "SamplesPerPixel": 1,
                "PhotometricInterpretation": "MONOCHROME2", "Rows": rows, "Columns": cols,
                "PixelSpacing": [PIXEL_SPACING_TEXT, PIXEL_SPACING_TEXT],
                "BitsAllocated": 16, "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0,
                "WindowCenter": "600", "WindowWidth": "1200",
            }
            enc = dw.SliceEncoder(common)
            for k, uid in enumerate(s.instance_uids):
                z = float(s.z[k])
                per = {"InstanceNumber": k + 1, "ImagePositionPatient": [s.x0, s.y0, z], "SliceLocation": z}
                members.append((f"{uid}.dcm", enc.encode(uid, per, s.pixels[k])))
    if study.manifest_name is not None:
        text = dw.manifest_text(MANIFEST_HEADER, _manifest_rows(study))
        members.append((study.manifest_name, text.encode("ascii")))
    members.extend(study.extra_members)
    order = np.random.default_rng([study.seed, 0x21F]).permutation(len(members))
    return [members[i] for i in order]


def study_zip_bytes(study: SynthStudy, compresslevel: int = 1) -> bytes:
    """The zip file of ``study`` (cut to 60 % for the ``truncated`` variant)."""
    data = dw.zip_bytes(study_members(study), compresslevel=compresslevel)
    if study.variant == "truncated":
        data = data[: int(len(data) * 0.6)]
    return data


def generate_subject(out_dir: str | Path, seed: int, variant: str | None = None, small: bool = False,
                     eid: int | None = None, *, swap_station: int | None = None,
                     swap_region: str | None = None, instance: int = 2, change: str | None = None,
                     change_size: float | None = None) -> SynthSubject:
    """Write ``{eid}_20201_2_0.zip`` and ``{eid}.truth.json`` into ``out_dir``.

    Both files are written atomically. Returns their paths and the truth.
    ``swap_station`` and ``swap_region``: see :func:`build_study`. ``instance=3``
    writes the follow-up visit instead (``change``, ``change_size``: see
    :func:`build_study`): ``{eid}_20201_3_0.zip`` and ``{eid}_20201_3_0.truth.json``.
    """
    study = build_study(seed, variant=variant, small=small, eid=eid, swap_station=swap_station,
                        swap_region=swap_region, instance=instance, change=change, change_size=change_size)
    out = Path(out_dir)
    zip_path = out / f"{study.eid}_20201_{instance}_0.zip"
    truth_path = out / (f"{study.eid}.truth.json" if instance == 2 else f"{study.eid}_20201_{instance}_0.truth.json")
    write_bytes(zip_path, study_zip_bytes(study))
    write_text(truth_path, json.dumps(study.truth, indent=2) + "\n")
    return SynthSubject(zip_path=zip_path, truth_path=truth_path, truth=study.truth)


def generate(out_dir: str | Path, n: int, seed: int, variant: str | None = None,
             small: bool = False, *, swap_station: int | None = None,
             swap_region: str | None = None) -> list[SynthSubject]:
    """Write ``n`` subjects with seeds ``seed, seed + 1, ...`` into ``out_dir``."""
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    default_eid(seed + n - 1)
    return [generate_subject(out_dir, seed + i, variant=variant, small=small, swap_station=swap_station,
                             swap_region=swap_region) for i in range(n)]
