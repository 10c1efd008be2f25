"""The frames of a BINARY DICOM SEG: which (segment, slice) frames exist, their 1-bit pixel data and their
per-frame functional groups, encoded directly (:mod:`CovidCTLib.outputs.dicom_encoding`).

Layout (the same as highdicom's, so that highdicom and DCMQI read it as their own):

* frames run segment by segment (segment number 1, 2, ...), and within a segment along the slice normal
  (increasing distance of ImagePositionPatient along the column x row direction, head first for a standard
  axial series);
  a frame where the segment has no voxel is omitted, and so is a slice no segment touches;
* Dimension Index Values = (segment number, 1-based index of the slice among the slices kept);
* each frame references its source CT slice (Derivation Image Sequence, spatial locations preserved) and
  repeats that slice's ImagePositionPatient exactly as the source file states it;
* pixel data: every frame's pixels row by row, one bit per pixel, the first pixel in the least significant
  bit (PS3.5 8.1.1), the frames one after another without padding, the whole padded to even length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CovidCTLib.outputs import dicom_encoding as enc

PURPOSE_SOURCE = ("121322", "DCM", "Source image for image processing operation")
DERIVATION_SEGMENTATION = ("113076", "DCM", "Segmentation")


@dataclass(frozen=True)
class SourceSlice:
    """What a frame needs of its source CT slice."""

    sop_class_uid: str
    sop_instance_uid: str
    position: str  # ImagePositionPatient as stored in the source (DS values joined by backslashes)
    distance: float  # position along the slice normal (mm), the frame order


@dataclass(frozen=True)
class EncodedFrames:
    """The frames of a SEG: count, per-frame functional groups (raw sequence value), pixel data bytes."""

    number_of_frames: int
    per_frame_groups: bytes
    pixel_data: bytes
    segments_overlap: bool


def _derivation_bytes(source: SourceSlice) -> bytes:
    source_item = enc.item(
        enc.text(0x00081150, "UI", source.sop_class_uid),
        enc.text(0x00081155, "UI", source.sop_instance_uid),
        enc.text(0x0028135A, "CS", "YES"),
        enc.sequence(0x0040A170, [enc.code_item(*PURPOSE_SOURCE)]),
    )
    derivation = enc.item(
        enc.sequence(0x00082112, [source_item]),
        enc.sequence(0x00089215, [enc.code_item(*DERIVATION_SEGMENTATION)]),
    )
    return enc.sequence(0x00089124, [derivation])


def _position_bytes(source: SourceSlice) -> bytes:
    return enc.sequence(0x00209113, [enc.item(enc.text(0x00200032, "DS", source.position))])


def _segment_bytes(number: int) -> bytes:
    return enc.sequence(0x0062000A, [enc.item(enc.numbers(0x0062000B, "US", [number]))])


def encode_frames(masks: list[tuple[np.ndarray, int]], sources: list[SourceSlice]) -> EncodedFrames:
    """Encode the frames of ``masks`` (each ``(labelmap, label)``: the segment is ``labelmap == label``; the
    list index + 1 is the segment number) on the slices ``sources`` (``sources[z]`` is slice ``z`` of every
    ``(z, y, x)`` labelmap). Masks of the same labelmap never overlap; masks of different ones may.
    """
    if not masks:
        raise ValueError("a DICOM SEG needs at least one segment")
    depth, rows, columns = masks[0][0].shape
    if len(sources) != depth:
        raise ValueError(f"{len(sources)} source slices for labelmaps of {depth} slices")
    order = sorted(range(depth), key=lambda z: sources[z].distance)
    frame_pixels = rows * columns
    # packed[(segment index, z)]: the frame's bits (little bit order, padded to whole bytes)
    packed: dict[tuple[int, int], np.ndarray] = {}
    for index, (labelmap, label) in enumerate(masks):
        if labelmap.shape != (depth, rows, columns):
            raise ValueError(f"segment {index + 1}: labelmap shape {labelmap.shape} != {(depth, rows, columns)}")
        for z in order:
            plane = labelmap[z] == label
            if plane.any():
                packed[(index, z)] = np.packbits(plane, axis=None, bitorder="little")
    kept = [z for z in order if any((index, z) in packed for index in range(len(masks)))]
    if not packed:  # nothing segmented: every frame is written (empty), as highdicom does
        kept = order
        empty = np.zeros((frame_pixels + 7) // 8, np.uint8)
        packed = {(index, z): empty for index in range(len(masks)) for z in order}
    slice_number = {z: n for n, z in enumerate(kept, start=1)}
    derivation = {z: _derivation_bytes(sources[z]) for z in kept}
    position = {z: _position_bytes(sources[z]) for z in kept}
    items: list[bytes] = []
    frames: list[np.ndarray] = []
    for index in range(len(masks)):
        segment = _segment_bytes(index + 1)
        for z in kept:
            bits = packed.get((index, z))
            if bits is None:
                continue
            content = enc.sequence(0x00209111, [enc.item(enc.numbers(0x00209157, "UL", [index + 1, slice_number[z]]))])
            items.append(enc.item(derivation[z], content, position[z], segment))
            frames.append(bits)
    return EncodedFrames(
        number_of_frames=len(frames),
        per_frame_groups=enc.sequence_value(items),
        pixel_data=_pixel_data(frames, frame_pixels),
        segments_overlap=_overlap(packed, [id(labelmap) for labelmap, _ in masks]),
    )


def _pixel_data(frames: list[np.ndarray], frame_pixels: int) -> bytes:
    """The frames' bits one after another (re-packed as one bit stream when a frame is not whole bytes)."""
    if frame_pixels % 8 == 0:
        data = b"".join(frame.tobytes() for frame in frames)
    else:
        bits = np.concatenate([np.unpackbits(f, count=frame_pixels, bitorder="little") for f in frames])
        data = np.packbits(bits, bitorder="little").tobytes()
    return data + b"\x00" if len(data) % 2 else data


def _overlap(packed: dict[tuple[int, int], np.ndarray], owners: list[int]) -> bool:
    """Whether a voxel lies in two segments (only segments of different labelmaps can share one)."""
    by_slice: dict[int, dict[int, np.ndarray]] = {}
    for (index, z), bits in packed.items():
        cover = by_slice.setdefault(z, {})
        owner = owners[index]
        cover[owner] = bits if owner not in cover else cover[owner] | bits
    for cover in by_slice.values():
        layers = list(cover.values())
        for i, first in enumerate(layers):
            for second in layers[i + 1 :]:
                if np.bitwise_and(first, second).any():
                    return True
    return False
