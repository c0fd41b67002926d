"""Where a dataset lives: a local folder, or a URI that pyarrow's filesystems understand (s3://, gs://, file://, ...).

A location is a string or a Path:
- a URI (`s3://bucket/prefix`, anything `pyarrow.fs.FileSystem.from_uri` takes) is kept as written; readers stream
  its shards from there on whichever node they run. Credentials are the filesystem's own: for S3 the standard AWS
  variables or the instance's role, and AWS_ENDPOINT_URL for S3-compatible stores (MinIO, ...);
- anything else is a local folder: absolute, or relative to this node's BINSWEEP_HOME (`trainables.home`), unless
  BINSWEEP_DATA_ROOT names a shared root for relative locations (a URI, or a folder mounted on every node). Only a
  string can be a URI (a Path folds `s3://` into `s3:/`).

Builders always write a local folder. For a URI they write a staging folder under the home's cache, keyed by the URI
(an interrupted build resumes there like a local one), and `publish` uploads it with `manifest.json` last, so a
dataset with a manifest is complete and every reader refuses one without (`load_manifest` needs it). Publishing
again is idempotent: a dataset already there with the same fingerprint is left as it is, files already uploaded are
skipped, and a different dataset (or build) at the URI is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, TypeVar

from trainables.home import home, resolve

MANIFEST = "manifest.json"
BUILD_STATE = "build.json"  # what the builders record of the build in progress (config digest), uploaded first
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_OBJECT_STORES = ("s3", "gcs")  # no directories to create; an object appears whole when its upload ends
M = TypeVar("M")


def is_uri(location) -> bool:
    """True for a URI string (scheme://...); a Path or a plain path is a local folder."""
    return isinstance(location, str) and bool(_URI.match(location))


DATA_ROOT_ENV = "BINSWEEP_DATA_ROOT"


def normalize(location: str | Path) -> Path | str:
    """A configured location (data.root, a sweep's dataset): a URI as given without a trailing slash; a relative path
    under BINSWEEP_DATA_ROOT when that is set (e.g. s3://bucket/binsweep on a cluster, so that the shipped sweep
    files' `dataset: data/loc` means the same shared place on every node); else the absolute local folder under this
    node's home."""
    if is_uri(location):
        return location.rstrip("/")
    data_root = os.environ.get(DATA_ROOT_ENV)
    if data_root and not Path(location).is_absolute():
        return normalize(join(data_root, Path(location).as_posix()) if is_uri(data_root)
                         else Path(data_root) / location)
    return resolve(location)


def join(location: str | Path, *parts: str) -> Path | str:
    """A file inside a dataset: a Path inside a local folder (as given: a relative one stays relative), a URI
    string inside a URI."""
    if is_uri(location):
        return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(location).joinpath(*parts)


def filesystem(location: str | Path):
    """(pyarrow filesystem, path inside it) of a file or folder; a relative local path is taken from the working
    directory, like any path (`normalize` first for configured locations)."""
    import pyarrow.fs

    if is_uri(location):
        fs, path = pyarrow.fs.FileSystem.from_uri(location.rstrip("/"))
        return fs, path.rstrip("/")
    return pyarrow.fs.LocalFileSystem(), str(Path(location).absolute())


def exists(location: str | Path) -> bool:
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def read_bytes(location: str | Path) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode()


def read_table(location: str | Path, columns: list[str] | None = None, fs=None):
    """One Parquet file as a table; `fs` given, `location` is a path inside it (a reader opens its filesystem once)."""
    import pyarrow.parquet as pq

    if fs is None:
        fs, location = filesystem(location)
    return pq.read_table(location, columns=columns, filesystem=fs)


def missing_manifest(root: str | Path, build: str) -> FileNotFoundError:
    """What readers raise for a dataset without its manifest: never built, or (at a URI) not completely published.
    `build` is the command (or commands) that builds one at `root`."""
    path = join(root, MANIFEST)
    if is_uri(root):
        return FileNotFoundError(
            f"{path} not found: no complete dataset at {root} (its manifest is uploaded last, so without one the "
            f"dataset was never published there or its upload was interrupted); build and publish it with {build}")
    return FileNotFoundError(f"{path} not found: build a dataset first ({build})")


# ---------------------------------------------------------------------------------------------- staging, publishing


def staging_dir(uri: str) -> Path:
    """The node-local folder a dataset for `uri` is built in before it is published: under the home's cache, named
    after the URI (readable part + hash), so the same URI always builds in the same place and resumes there."""
    uri = normalize(uri)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", uri).strip("-")[:80]
    return home() / "data" / "cache" / "staging" / f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def _remote_json(uri: str, name: str) -> dict | None:
    try:
        return json.loads(read_text(join(uri, name)))
    except FileNotFoundError:
        return None
    except ValueError:  # an unreadable file counts as a different build
        return {}


def _check_remote_build(uri: str, digest: str | None) -> None:
    if digest is None:
        return
    state = _remote_json(uri, BUILD_STATE)
    if state is not None and state.get("config_digest") != digest:
        raise ValueError(f"{uri} holds a different build (config {state.get('config_digest')}, now {digest}): "
                         f"choose another --out or delete {uri}")


def _files_to_publish(folder: Path) -> list[str]:
    """Relative paths, build state first and manifest last; temporary files are left out."""
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and not p.name.endswith(".tmp") and ".tmp." not in p.name]

    def order(rel: str) -> tuple[int, str]:
        return (0 if rel == BUILD_STATE else 2 if rel == MANIFEST else 1, rel)

    return sorted(files, key=order)


def _put(fs, src: Path, dest: str) -> None:
    """Upload one file. On a filesystem with folders it is written beside its final name and renamed, so a file that
    exists there is complete; an object store shows an object only once its upload has finished anyway."""
    parent = dest.rpartition("/")[0]
    direct = fs.type_name in _OBJECT_STORES
    if not direct and parent:
        fs.create_dir(parent, recursive=True)
    target = dest if direct else dest + ".tmp"
    with open(src, "rb") as f, fs.open_output_stream(target) as out:
        shutil.copyfileobj(f, out, 8 << 20)
    if not direct:
        fs.move(target, dest)


def publish(folder: str | Path, uri: str, progress: Callable[[int, int, str], None] = lambda done, total, rel: None
            ) -> None:
    """Upload a locally built dataset (`folder` with its manifest.json) to `uri`: the build state first, then every
    shard and side file, `manifest.json` last. A dataset with the same fingerprint already at `uri` is left alone; a
    different dataset or build there is refused. When `uri` already has this build's build.json (a rerun after an
    interrupted upload), files already there with the same size are not uploaded again. progress(done, total, file)
    is called after each file."""
    import pyarrow.fs

    folder = Path(folder)
    if not is_uri(uri):
        raise ValueError(f"publish needs a URI such as s3://bucket/prefix, not {uri!r}")
    uri = normalize(uri)
    local = json.loads((folder / MANIFEST).read_text())  # FileNotFoundError: nothing complete to publish
    there = _remote_json(uri, MANIFEST)
    if there is not None:
        if there.get("fingerprint") == local["fingerprint"]:
            return
        raise ValueError(f"{uri} already holds another dataset (fingerprint {str(there.get('fingerprint'))[:16]}, "
                         f"this one {local['fingerprint'][:16]}): choose another --out or delete {uri}")
    resumed = False  # the URI holds part of this very build: what is there in full needs no second upload
    if (folder / BUILD_STATE).is_file():
        digest = json.loads((folder / BUILD_STATE).read_text()).get("config_digest")
        _check_remote_build(uri, digest)
        resumed = _remote_json(uri, BUILD_STATE) is not None
    fs, base = filesystem(uri)
    files = _files_to_publish(folder)
    for done, rel in enumerate(files, 1):
        src = folder / rel
        info = fs.get_file_info(f"{base}/{rel}")
        same = info.type == pyarrow.fs.FileType.File and info.size == src.stat().st_size
        if rel in (MANIFEST, BUILD_STATE) or not (resumed and same):
            _put(fs, src, f"{base}/{rel}")
        progress(done, len(files), rel)


def build_and_publish(uri: str, build: Callable[[Path], M], *, digest: str | None = None,
                      load: Callable[[str], M] | None = None,
                      publish_progress: Callable[[int, int, str], None] = lambda done, total, rel: None) -> M:
    """Build a dataset for `uri` in its staging folder (`build(folder)` -> manifest), publish it, and return the
    manifest with its root set to the URI; the staging folder is removed once the URI holds the dataset.

    With `digest` (the build config's) and `load`, a URI that already holds this very build is returned as it is,
    and one holding another build is refused before anything is built."""
    uri = normalize(uri)
    _check_remote_build(uri, digest)
    if digest is not None and load is not None and is_file(join(uri, MANIFEST)) \
            and (_remote_json(uri, BUILD_STATE) or {}).get("config_digest") == digest:
        return load(uri)
    staging = staging_dir(uri)
    staging.parent.mkdir(parents=True, exist_ok=True)
    manifest = build(staging)
    publish(staging, uri, publish_progress)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        return replace(manifest, root=uri)
    except TypeError:  # a builder whose result is not a manifest dataclass
        return manifest
