"""Writing the de-identified dataset: raw elements as bytes, large deferred values streamed once.

pydicom's ``dcmwrite`` deep-copies the file meta, encodes every element through a scratch buffer (two
extra copies of each value, pixel data included) and loads deferred values into memory before writing
them. The engine's output is always written in the dataset's own encoding, so most elements are still
raw bytes read from the source: this writer emits their header and bytes directly, streams deferred
binary values (large pixel data, native or encapsulated) from the source file to the output in chunks,
and hands everything else (converted elements, sequences, other undefined lengths) to pydicom's own
``write_data_element``.

Whenever the output encoding or character set differs from the source's, or the dataset is deflated,
the engine uses ``dcmwrite`` unchanged (see ``Engine._write``).
"""

from __future__ import annotations

import struct
from typing import IO, Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomIO
from pydicom.filewriter import write_data_element
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from sendit.deid.plan import elements

_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
# binary values that pydicom's conversion would hand back byte for byte: safe to stream unconverted
# (not UN: converting it may replace the VR with the dictionary's, and pydicom does not pad it)
_STREAM_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV"})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_DIRECT = 1 << 16  # values at least this long skip the staging buffer
_CHUNK = 1 << 20
_UNDEFINED = 0xFFFFFFFF


def file_meta_bytes(class_uid: str, instance_uid: str, syntax: str, impl_uid: str, version: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (Explicit VR Little Endian).

    Raises ``AttributeError`` like pydicom's ``validate_file_meta`` when a required UID is empty.
    """
    missing = [n for n, v in (("class", class_uid), ("instance", instance_uid), ("syntax", syntax)) if not v]
    if missing:
        raise AttributeError("Required File Meta Information elements are empty: " + ", ".join(missing))
    body = bytearray()
    body += b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<L", 2) + b"\x00\x01"
    for element, value, pad in (
        (0x0002, class_uid, b"\x00"),
        (0x0003, instance_uid, b"\x00"),
        (0x0010, syntax, b"\x00"),
        (0x0012, impl_uid, b"\x00"),
        (0x0013, version, b" "),
    ):
        data = value.encode("latin-1")
        if len(data) % 2:
            data += pad
        if len(data) > 0xFFFF:
            raise ValueError("a File Meta Information value is too long")
        vr = b"SH" if element == 0x0013 else b"UI"
        body += struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(data)) + data
    group_length = b"\x02\x00\x00\x00UL" + struct.pack("<HL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + bytes(body)


class _Out:
    """Small pieces staged in one buffer, large values written straight through."""

    __slots__ = ("dst", "pending")

    def __init__(self, dst: IO[bytes]) -> None:
        self.dst = dst
        self.pending = bytearray()

    def flush(self) -> None:
        if self.pending:
            self.dst.write(self.pending)
            self.pending.clear()


def write_body(
    dst: IO[bytes],
    ds: Dataset,
    implicit: bool,
    little: bool,
    compressed: bool | None,
    source: IO[bytes] | None,
) -> None:
    """Write the top-level elements of ``ds`` (in its original encoding) to ``dst``.

    ``compressed``: whether the transfer syntax encapsulates pixel data (None: not a public syntax, the
    pixel data length is written as it is). ``source``: the file deferred values are streamed from
    (None: pydicom loads them).
    """
    body = _Body(dst, ds, implicit, little, compressed, source)
    items = elements(ds)
    for tag in sorted(items):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue  # retired group length: pydicom does not write it either
        elem = items[tag]
        if isinstance(elem, RawDataElement) and (
            (tag == 0x7FE00010 and body.encapsulated(elem))
            or (_direct(elem, tag, compressed) and body.raw(tag, elem))
        ):
            continue
        body.converted(tag)
    body.out.flush()


class _Body:
    """One body being written: the encoding's packers, and one method per way an element is written."""

    __slots__ = (
        "_charset",
        "_wrapped",
        "compressed",
        "ds",
        "dst",
        "implicit",
        "little",
        "long",
        "out",
        "short",
        "source",
        "tag",
    )

    def __init__(
        self,
        dst: IO[bytes],
        ds: Dataset,
        implicit: bool,
        little: bool,
        compressed: bool | None,
        source: IO[bytes] | None,
    ) -> None:
        end = "<" if little else ">"
        self.dst, self.ds, self.source = dst, ds, source
        self.implicit, self.little, self.compressed = implicit, little, compressed
        self.out = _Out(dst)
        self.tag = struct.Struct(end + "HH").pack
        self.short = struct.Struct(end + "H").pack
        self.long = struct.Struct(end + "L").pack
        self._wrapped: DicomIO | None = None
        self._charset: Any = None

    def encapsulated(self, elem: RawDataElement) -> bool:
        """Deferred encapsulated pixel data: its items are copied from the source, not loaded."""
        source = self.source
        if not (
            self.compressed
            and source is not None
            and not self.implicit
            and elem.value is None
            and elem.length == _UNDEFINED
            and elem.VR in ("OB", "OW")
        ):
            return False
        size = _encapsulated_size(source, elem.value_tell, "<" if self.little else ">")
        if size is None:
            return False
        out, dst = self.out, self.dst
        out.pending += self.tag(0x7FE0, 0x0010) + elem.VR.encode("ascii") + b"\x00\x00"
        out.pending += self.long(_UNDEFINED)
        out.flush()
        _stream(source, elem.value_tell, size, dst)
        if size & 1:
            dst.write(b"\x00")  # as pydicom's OB writer
        dst.write(self.tag(0xFFFE, 0xE0DD) + self.long(0))  # sequence delimiter
        return True

    def raw(self, tag: int, elem: RawDataElement) -> bool:
        """A raw element's header and bytes, written or streamed as they are; False: pydicom must."""
        value, vr = elem.value, elem.VR
        if value is None:
            return self._streamed(tag, elem)
        length = len(value)
        if self.implicit:
            header = self.tag(tag >> 16, tag & 0xFFFF) + self.long(length)
        elif vr in _LONG_VRS:
            header = self.tag(tag >> 16, tag & 0xFFFF) + vr.encode("ascii") + b"\x00\x00" + self.long(length)
        elif length <= 0xFFFF and vr is not None and len(vr) == 2:
            header = self.tag(tag >> 16, tag & 0xFFFF) + vr.encode("ascii") + self.short(length)
        else:
            return False  # a VR pydicom has to fix (too long for 16 bits): its own writer
        out = self.out
        out.pending += header
        if length >= _DIRECT:
            out.flush()
            self.dst.write(value)
        else:
            out.pending += value
        return True

    def _streamed(self, tag: int, elem: RawDataElement) -> bool:
        """A deferred binary value streamed from the source in chunks (never loaded whole)."""
        source, vr = self.source, elem.VR
        if source is None or not elem.length or not _streamable(tag, vr, self.implicit):
            return False  # empty binary/numeric value, or not streamable: pydicom converts it
        length = elem.length
        out = self.out
        out.pending += self.tag(tag >> 16, tag & 0xFFFF)
        if not self.implicit:
            out.pending += str(vr).encode("ascii") + b"\x00\x00"  # binary VRs: 32-bit length
        out.pending += self.long(length + (length & 1))
        out.flush()
        _stream(source, elem.value_tell, length, self.dst)
        if length & 1:
            self.dst.write(b"\x00")  # pydicom's writers for these VRs pad odd values
        return True

    def converted(self, tag: int) -> None:
        """Everything else: pydicom's element writer (converted values, sequences, undefined lengths)."""
        self.out.flush()
        if self._wrapped is None:
            self._wrapped = DicomIO(self.dst)
            self._wrapped.is_implicit_VR, self._wrapped.is_little_endian = self.implicit, self.little
            self._charset = self.ds.get("SpecificCharacterSet", "iso8859")
        element = self.ds.get_item(tag)
        if tag == 0x7FE00010 and self.compressed is not None:
            if isinstance(element, RawDataElement):
                element = self.ds[tag]  # converted so that its length form can be set, as dcmwrite does
            element.is_undefined_length = self.compressed
        write_data_element(self._wrapped, element, self._charset)


def _direct(elem: RawDataElement, tag: int, compressed: bool | None) -> bool:
    """A raw element this writer may emit itself (defined length, length form as dcmwrite would)."""
    if tag == 0x7FE00010 and (compressed or elem.VR == "UN"):
        # dcmwrite converts the pixel data element: marks encapsulated data undefined length (and
        # checks the encapsulation), replaces a UN VR with the dictionary's; so does this writer
        return False
    return elem.length != _UNDEFINED


def _streamable(tag: int, vr: str | None, implicit: bool) -> bool:
    if implicit:
        return tag in _PIXEL_TAGS  # no VR in the file: only the pixel data are known to be binary
    return vr in _STREAM_VRS


def _encapsulated_size(source: IO[bytes], offset: int, end: str) -> int | None:
    """Bytes of encapsulated pixel data items at ``offset`` up to their sequence delimiter.

    Reads only the 8-byte item headers. None when the value is not a run of defined-length items
    closed by a delimiter (pydicom's own reading then decides what is written).
    """
    header = struct.Struct(end + "HHL")
    position = offset
    while True:
        source.seek(position)
        data = source.read(8)
        if len(data) < 8:
            return None
        group, element, length = header.unpack(data)
        if group != 0xFFFE:
            return None
        if element == 0xE0DD:
            return position - offset if length == 0 else None
        if element != 0xE000 or length == _UNDEFINED:
            return None
        position += 8 + length


def _stream(source: IO[bytes], offset: int, length: int, dst: IO[bytes]) -> None:
    """Copy ``length`` bytes at ``offset`` of the source to the output, one chunk at a time."""
    source.seek(offset)
    readinto = getattr(source, "readinto", None)
    buffer = bytearray(min(length, _CHUNK))
    view = memoryview(buffer)
    remaining = length
    while remaining:
        want = min(remaining, len(buffer))
        if readinto is not None:
            got = readinto(view[:want])
            chunk: Any = view[:got] if got else b""
        else:
            chunk = source.read(want)
            got = len(chunk)
        if not got:
            raise EOFError("deferred value runs past the end of the file")
        dst.write(chunk)
        remaining -= got


__all__ = ["file_meta_bytes", "write_body"]
