"""Explicit VR Little Endian encoding of the few DICOM element kinds the SEG's repeated parts need.

The DICOM SEG of a chest CT has one per-frame functional group item per frame (about a thousand) and one
reference item per source slice. Building and writing those as pydicom Datasets took seconds, so
:mod:`CovidCTLib.outputs.seg_frames` encodes them here directly as bytes (PS3.5 section 7: tag, VR, length,
value; sequences and items with defined lengths) and hands them to pydicom as raw elements. Values are
padded to even length as PS3.5 6.2 requires (UI with NUL, the other strings with a space).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

#: VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 table 7.1-1)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM = 0xFFFEE000


def _tag(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One data element (``value`` already encoded; padded here to even length with NUL bytes)."""
    if len(value) % 2:
        value += b"\x00"
    if vr in _LONG_VRS:
        return _tag(tag) + vr.encode("ascii") + b"\x00\x00" + struct.pack("<I", len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is too long for VR {vr}")
    return _tag(tag) + vr.encode("ascii") + struct.pack("<H", len(value)) + value


def text(tag: int, vr: str, value: str) -> bytes:
    """A string element (UI padded with NUL, every other string VR with a space)."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return element(tag, vr, data)


def numbers(tag: int, vr: str, values: Sequence[int]) -> bytes:
    """A US (16-bit) or UL (32-bit) element holding ``values``."""
    code = {"US": "H", "UL": "I"}[vr]
    return element(tag, vr, struct.pack(f"<{len(values)}{code}", *values))


def item(*elements: bytes) -> bytes:
    """One sequence item of defined length holding ``elements`` (each already encoded, in tag order)."""
    content = b"".join(elements)
    return _tag(_ITEM) + struct.pack("<I", len(content)) + content


def sequence(tag: int, items: Iterable[bytes]) -> bytes:
    """A sequence element of defined length holding the encoded ``items``."""
    return element(tag, "SQ", b"".join(items))


def sequence_value(items: Iterable[bytes]) -> bytes:
    """The value of a sequence (its items one after another), for a raw pydicom element."""
    return b"".join(items)


def code_item(value: str, scheme: str, meaning: str) -> bytes:
    """An item of a code sequence (Code Value, Coding Scheme Designator, Code Meaning)."""
    return item(text(0x00080100, "SH", value), text(0x00080102, "SH", scheme), text(0x00080104, "LO", meaning))
