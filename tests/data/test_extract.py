"""Safe extraction refuses entries that would escape the target, and writes nothing when it does."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from primer.data.extract import extract
from primer.errors import PrimerError


def make_zip(path: Path, entries: list[tuple[str, bytes]], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, files: dict[str, bytes], symlinks=None, hardlinks=None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for kind, links in ((tarfile.SYMTYPE, symlinks or {}), (tarfile.LNKTYPE, hardlinks or {})):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tf.addfile(info)
    return path


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_zip_member_is_kept_and_stripped(tmp_path):
    archive = make_zip(tmp_path / "a.zip",
                       [("PetImages/Cat/1.jpg", b"c"), ("PetImages/Dog/2.jpg", b"d"), ("readme.txt", b"r")])
    out = extract(archive, tmp_path / "out", member="PetImages")
    assert listing(out) == {"Cat", "Cat/1.jpg", "Dog", "Dog/2.jpg"}
    assert (out / "Dog" / "2.jpg").read_bytes() == b"d"


def test_tar_with_inside_links_extracts(tmp_path):
    archive = make_tar(tmp_path / "a.tgz", {"d/a.txt": b"x"}, symlinks={"d/b.txt": "a.txt"},
                       hardlinks={"d/c.txt": "d/a.txt"})
    out = extract(archive, tmp_path / "out")
    assert (out / "d" / "b.txt").read_bytes() == b"x" and (out / "d" / "c.txt").read_bytes() == b"x"


@pytest.mark.parametrize(
    "entries, links",
    [
        ([("ok.txt", b"1"), ("../evil.txt", b"x")], None),
        ([("ok.txt", b"1"), ("sub/../../evil.txt", b"x")], None),
        ([("ok.txt", b"1"), ("/tmp/evil.txt", b"x")], None),
        ([("ok.txt", b"1")], {"link": "../../etc/passwd"}),
        ([("ok.txt", b"1")], {"link": "/etc/passwd"}),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "link-up", "link-absolute"],
)
def test_zip_escapes_are_refused_and_nothing_is_written(tmp_path, entries, links):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_zip(tmp_path / "bad.zip", entries, links)
    before = listing(tmp_path)
    with pytest.raises(PrimerError, match="outside the target"):
        extract(archive, work / "out")
    assert listing(tmp_path) == before  # no target, no temp folder, nothing beside it


@pytest.mark.parametrize(
    "files, symlinks, hardlinks",
    [
        ({"../evil.txt": b"x"}, None, None),
        ({"/abs/evil.txt": b"x"}, None, None),
        ({}, {"up": "../../outside"}, None),
        ({}, {"abs": "/etc"}, None),
        ({}, None, {"hard": "../outside"}),
    ],
    ids=["dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_tar_escapes_are_refused_and_nothing_is_written(tmp_path, files, symlinks, hardlinks):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_tar(tmp_path / "bad.tgz", {"ok.txt": b"1", **files}, symlinks, hardlinks)
    before = listing(tmp_path)
    with pytest.raises(PrimerError, match="outside the target"):
        extract(archive, work / "out")
    assert listing(tmp_path) == before


def test_chained_links_that_escape_physically_are_refused(tmp_path):
    # a/b -> . is inside; then a/b/c -> .. looks inside lexically (a/b/..) but is a/.. = outside.
    archive = make_tar(tmp_path / "chain.tgz", {"a/x": b"1"}, symlinks={"a/b": ".", "a/b/c": "../.."})
    with pytest.raises(PrimerError, match="outside the target"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_member_names_it(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("other/x.txt", b"1")])
    with pytest.raises(PrimerError, match="no folder 'PetImages'"):
        extract(archive, tmp_path / "out", member="PetImages")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_text("hello")
    with pytest.raises(PrimerError, match="neither a zip nor a tar"):
        extract(tmp_path / "x.zip", tmp_path / "out")
