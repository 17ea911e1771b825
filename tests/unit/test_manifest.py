"""The manifest type: names, checksums, JSON round trip, and validation errors that never name objects."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sendit import __version__
from sendit.manifest import (
    FORMAT,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    ManifestError,
    file_checksums,
    is_manifest,
    manifest_name,
)
from sendit.naming import batch_folder as folder_of  # the one definition of an object's folder

# A folder named the way real ones are: after a patient and an accession number.
FOLDER = "Zyxwort Quillane ACC99817263 Étude"
MD5_HELLO = "XrY7u+Ae7tCTyyK7j1rNww=="  # base64 MD5 of b"hello world" (RFC 1321 test vector style)
MD5_EMPTY = "1B2M2Y8AsgTpgAmY7PhCfg=="  # base64 MD5 of b""


def _entry(
    rel: str, size: int = 11, md5: str = MD5_HELLO, generation: str = "1700000000000001"
) -> ManifestEntry:
    return ManifestEntry(f"{FOLDER}/{rel}", size, md5, generation)


def _manifest() -> Manifest:
    return Manifest.build(
        FOLDER, [_entry("series_2/b.dcm", 5), _entry("series_1/a.dcm"), _entry("é.dcm", 0, MD5_EMPTY)]
    )


@pytest.mark.parametrize(
    ("name", "folder", "sealed"),
    [
        (f"{FOLDER}/{MANIFEST_NAME}", FOLDER, True),
        (f"{FOLDER}/series_1/{MANIFEST_NAME}", FOLDER, False),  # deeper: an ordinary file
        (MANIFEST_NAME, "", False),  # at the bucket root: no folder, no seal
        (f"{FOLDER}/a.dcm", FOLDER, False),
        (f"/{MANIFEST_NAME}", "", False),
        ("L1/x/y/z.dcm", "L1", False),
    ],
)
def test_names(name: str, folder: str, sealed: bool) -> None:
    assert folder_of(name) == folder
    assert is_manifest(name) is sealed


def test_manifest_name_is_inside_one_top_level_folder() -> None:
    assert manifest_name(FOLDER) == f"{FOLDER}/sendit-manifest.json"
    for bad in ("", "a/b"):
        with pytest.raises(ManifestError):
            manifest_name(bad)


def test_file_checksums_match_what_gcs_reports(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello world")
    sums = file_checksums(path)
    assert (sums.size, sums.md5, sums.crc32c) == (11, MD5_HELLO, "yZRlqg==")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (3 * 1024**2 + 7))  # several read chunks
    import base64
    import hashlib

    assert file_checksums(big).md5 == base64.b64encode(hashlib.md5(big.read_bytes()).digest()).decode()
    assert file_checksums(big).size == 3 * 1024**2 + 7


def test_build_sorts_counts_and_round_trips() -> None:
    manifest = _manifest()
    assert [e.name for e in manifest.objects] == sorted(e.name for e in manifest.objects)
    assert (manifest.count, manifest.total_bytes) == (3, 16)
    assert manifest.name == f"{FOLDER}/{MANIFEST_NAME}"
    assert manifest.tool_version == __version__
    text = manifest.to_json()
    data = json.loads(text)
    assert data["format"] == FORMAT and data["tool"] == "sendit" and data["folder"] == FOLDER
    assert data["created"].endswith("Z") and data["count"] == 3 and data["bytes"] == 16
    assert data["objects"][0] == {
        "name": f"{FOLDER}/series_1/a.dcm",
        "size": 11,
        "md5": MD5_HELLO,
        "generation": "1700000000000001",
    }
    assert "Étude" in text  # UTF-8, not \u escapes
    again = Manifest.from_json(text.encode("utf-8"))
    assert again == manifest
    assert again.names() == {e.name for e in manifest.objects}
    assert again.entry(f"{FOLDER}/é.dcm") == _entry("é.dcm", 0, MD5_EMPTY)
    assert again.entry(f"{FOLDER}/missing.dcm") is None


def test_an_empty_folder_manifest_is_valid() -> None:
    manifest = Manifest.from_json(Manifest.build(FOLDER, []).to_json())
    assert (manifest.count, manifest.total_bytes, manifest.objects) == (0, 0, ())


def test_unknown_extra_keys_are_ignored() -> None:
    data = _manifest().to_dict()
    data["comment"] = "written by a later 1.x"
    data["objects"][0]["crc32c"] = "yZRlqg=="
    assert Manifest.from_dict(data) == _manifest()


def _set(path: str, value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if value is KeyError:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _swap_first_two(data: dict[str, Any]) -> None:
    data["objects"][0], data["objects"][1] = data["objects"][1], data["objects"][0]


def _duplicate_first(data: dict[str, Any]) -> None:
    data["objects"].insert(0, copy.deepcopy(data["objects"][0]))
    data["count"] += 1
    data["bytes"] += data["objects"][0]["size"]


BAD = [
    (_set("format", "sendit-manifest/2"), "format"),
    (_set("format", KeyError), "format"),
    (_set("tool", "other"), "tool"),
    (_set("folder", ""), "folder"),
    (_set("folder", "a/b"), "folder"),
    (_set("folder", 7), "folder"),
    (_set("tool_version", KeyError), "tool_version"),
    (_set("created", "yesterday"), "created"),
    (_set("objects", {}), "objects"),
    (_set("objects.0", "a name"), r"objects\[0\]"),
    (_set("count", 2), "count"),
    (_set("count", True), "count"),
    (_set("bytes", 1), "bytes"),
    (_set("objects.1.name", "Other Patient ACC1/x.dcm"), r"objects\[1\]\.name"),
    (_set("objects.1.name", FOLDER + "/"), r"objects\[1\]\.name"),
    (_set("objects.1.name", f"{FOLDER}/{MANIFEST_NAME}"), "manifest itself"),
    (_set("objects.0.name", KeyError), r"objects\[0\]\.name"),
    (_set("objects.0.size", "11"), r"objects\[0\]\.size"),
    (_set("objects.0.size", True), r"objects\[0\]\.size"),
    (_set("objects.0.md5", "not base64!"), r"objects\[0\]\.md5"),
    (_set("objects.0.md5", "YWJj"), r"objects\[0\]\.md5"),  # base64, but 3 bytes
    (_set("objects.0.generation", 1700000000000001), r"objects\[0\]\.generation"),
    (_set("objects.0.generation", "17x"), r"objects\[0\]\.generation"),
    (_set("objects.0.generation", "١٢٣"), r"objects\[0\]\.generation"),  # non-ASCII digits
    (_swap_first_two, "order"),
    (_duplicate_first, "duplicate"),
]


@pytest.mark.parametrize(("mutate", "says"), BAD)
def test_invalid_manifests_are_refused_without_naming_objects(mutate: Any, says: str) -> None:
    data = _manifest().to_dict()
    mutate(data)
    with pytest.raises(ManifestError, match=says) as caught:
        Manifest.from_json(json.dumps(data))
    message = str(caught.value)
    for secret in ("Zyxwort", "ACC99817263", "Quillane", "Other Patient", "series_", ".dcm"):
        assert secret not in message


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe not utf-8", b"[]", b'"a string"', b"null"],
)
def test_not_a_manifest_object(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(raw)


def test_an_oversized_manifest_is_refused_unread() -> None:
    with pytest.raises(ManifestError, match="larger"):
        Manifest.from_json(b" " * (MAX_MANIFEST_BYTES + 1))


def test_build_validates_what_it_builds() -> None:
    with pytest.raises(ManifestError, match="duplicate"):
        Manifest.build(FOLDER, [_entry("a.dcm"), _entry("a.dcm")])
    with pytest.raises(ManifestError, match="md5"):
        Manifest.build(FOLDER, [_entry("a.dcm", md5="")])
