"""The upload manifest: the seal `sendit upload` writes as a folder's last object.

``<FOLDER>/sendit-manifest.json`` lists every object of the folder that the upload wrote or found unchanged
(full object name, size, base64 MD5 as GCS reports ``md5Hash``, generation), sorted by name, with the count,
the total bytes and the tool's version. The pipeline treats that object as the seal of its batch, never as
a file to de-identify.

Errors raised here (``ManifestError``) name a field and an index, never an object or folder name: object
names may embed patient names or accession numbers, and these messages end up in logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sendit.errors import ManifestError as ManifestError

FORMAT = "sendit-manifest/1"
TOOL = "sendit"
MANIFEST_NAME = "sendit-manifest.json"
CONTENT_TYPE = "application/json"
MAX_MANIFEST_BYTES = 64 * 1024**2  # about 400,000 entries; a bigger object is refused unread
_READ_CHUNK = 1024**2


# ------------------------------------------------------------------------------------------ names


def manifest_name(folder: str) -> str:
    """The manifest object of a folder: ``<folder>/sendit-manifest.json``."""
    if not folder or "/" in folder:
        raise ManifestError("a manifest belongs to one non-empty top-level folder")
    return f"{folder}/{MANIFEST_NAME}"


def is_manifest(object_name: str) -> bool:
    """True for ``<FOLDER>/sendit-manifest.json`` (a file of that name deeper in a folder is ordinary)."""
    folder, _, rest = object_name.partition("/")
    return bool(folder) and rest == MANIFEST_NAME


# ------------------------------------------------------------------------------------------ checksums


@dataclass(frozen=True)
class Checksums:
    """What GCS reports for an object: size, base64 MD5 (``md5Hash``) and base64 CRC32C (``crc32c``)."""

    size: int
    md5: str
    crc32c: str


def file_checksums(path: Path) -> Checksums:
    """Size, MD5 and CRC32C of a local file, read once in 1 MiB chunks."""
    import google_crc32c

    md5 = hashlib.md5(usedforsecurity=False)
    crc = google_crc32c.Checksum()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            md5.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Checksums(
        size=size,
        md5=base64.b64encode(md5.digest()).decode("ascii"),
        crc32c=base64.b64encode(crc.digest()).decode("ascii"),
    )


# ------------------------------------------------------------------------------------------ data type


@dataclass(frozen=True)
class ManifestEntry:
    """One listed object."""

    name: str
    size: int
    md5: str
    generation: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "md5": self.md5, "generation": self.generation}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _version() -> str:
    from sendit import __version__

    return __version__


@dataclass(frozen=True)
class Manifest:
    """A folder's seal. Build with ``Manifest.build``; read with ``Manifest.from_json`` (validated)."""

    folder: str
    objects: tuple[ManifestEntry, ...]
    tool_version: str = field(default_factory=_version)
    created: str = field(default_factory=_now)

    @classmethod
    def build(cls, folder: str, entries: Iterable[ManifestEntry], **kwargs: str) -> Manifest:
        """A validated manifest of ``entries`` (sorted by name) for ``folder``."""
        manifest = cls(folder=folder, objects=tuple(sorted(entries, key=lambda e: e.name)), **kwargs)
        manifest.validate()
        return manifest

    @property
    def name(self) -> str:
        """The manifest's own object name."""
        return manifest_name(self.folder)

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.objects)

    def names(self) -> frozenset[str]:
        return frozenset(e.name for e in self.objects)

    def entry(self, object_name: str) -> ManifestEntry | None:
        return next((e for e in self.objects if e.name == object_name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "folder": self.folder,
            "tool": TOOL,
            "tool_version": self.tool_version,
            "created": self.created,
            "count": self.count,
            "bytes": self.total_bytes,
            "objects": [e.to_dict() for e in self.objects],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, raw: str | bytes) -> Manifest:
        """Parse and validate a manifest object's content."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise ManifestError("manifest is not UTF-8 JSON") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate a decoded manifest (unknown extra keys are ignored: later /1 writers may add some)."""
        if not isinstance(data, Mapping):
            raise ManifestError("manifest is not a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestError(f"manifest format is not {FORMAT}")
        if data.get("tool") != TOOL:
            raise ManifestError(f"manifest tool is not {TOOL}")
        for key in ("folder", "tool_version", "created"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ManifestError(f"manifest field {key} is missing or not a string")
        objects = data.get("objects")
        if not isinstance(objects, list):
            raise ManifestError("manifest field objects is missing or not a list")
        manifest = cls(
            folder=data["folder"],
            objects=tuple(_entry(i, item) for i, item in enumerate(objects)),
            tool_version=data["tool_version"],
            created=data["created"],
        )
        manifest.validate()
        for key, actual in (("count", manifest.count), ("bytes", manifest.total_bytes)):
            if not _is_int(data.get(key)) or data[key] != actual:
                raise ManifestError(f"manifest field {key} does not match its objects")
        return manifest

    def validate(self) -> None:
        """Raise ``ManifestError`` unless every entry belongs to the folder, once, in name order."""
        if not self.folder or "/" in self.folder:
            raise ManifestError("manifest folder must be one non-empty top-level folder name")
        try:
            datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError("manifest field created is not an ISO-8601 time") from None
        prefix = self.folder + "/"
        previous = ""
        for index, entry in enumerate(self.objects):
            _check_entry(index, entry)
            if not entry.name.startswith(prefix) or len(entry.name) == len(prefix):
                raise ManifestError(f"objects[{index}].name is not an object of the manifest's folder")
            if is_manifest(entry.name):
                raise ManifestError(f"objects[{index}] lists the manifest itself")
            if index and entry.name <= previous:
                raise ManifestError(f"objects[{index}] is out of name order or a duplicate")
            previous = entry.name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(index: int, item: Any) -> ManifestEntry:
    if not isinstance(item, Mapping):
        raise ManifestError(f"objects[{index}] is not a JSON object")
    for key in ("name", "md5", "generation"):
        if not isinstance(item.get(key), str):
            raise ManifestError(f"objects[{index}].{key} is missing or not a string")
    if not _is_int(item.get("size")):
        raise ManifestError(f"objects[{index}].size is missing or not an integer")
    return ManifestEntry(name=item["name"], size=item["size"], md5=item["md5"], generation=item["generation"])


def _check_entry(index: int, entry: ManifestEntry) -> None:
    if not _is_int(entry.size) or entry.size < 0:
        raise ManifestError(f"objects[{index}].size is not a non-negative integer")
    try:
        digest = base64.b64decode(entry.md5, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise ManifestError(f"objects[{index}].md5 is not a base64 MD5")
    if not entry.generation.isascii() or not entry.generation.isdigit():
        raise ManifestError(f"objects[{index}].generation is not a decimal generation")
