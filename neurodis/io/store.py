"""Where run files live: a local folder or a prefix on an object store, behind one small path type.

``StorePath`` is the path of a run's file or folder. Local paths (no URI scheme, or ``file://``) go
through :mod:`pathlib` and ``os`` exactly as before; a URI that :func:`pyarrow.fs.FileSystem.from_uri`
resolves (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``) goes through that :mod:`pyarrow.fs` filesystem.
pyarrow.fs rather than fsspec: pyarrow is already what reads and writes every table (``pyarrow.dataset``
takes the same filesystem object), its S3 and GCS clients are native and need no extra package, and it
takes credentials and the endpoint from the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, the AWS config files, GCP's
application default credentials). Nothing here takes a credential as an argument, and a ``StorePath``
prints as its URI only.

Object stores have no rename and no folders: a write is one PUT of the whole object (it appears whole
or not at all), a folder "exists" while some object lies under its prefix, and ``mkdir`` does nothing.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

_LOCAL_SCHEMES = ("file://",)


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names an object store (a URI other than ``file://``)."""
    text = str(location)
    return "://" in text and not text.startswith(_LOCAL_SCHEMES)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A new filesystem per run location: it reads the credentials the environment holds now."""
    return pafs.FileSystem.from_uri(uri)


class StorePath:
    """A file or folder of a run: local (``fs is None``, backed by :class:`pathlib.Path`) or on a
    :mod:`pyarrow.fs` filesystem (``fs``, the filesystem's path ``key`` and the URI ``scheme``)."""

    __slots__ = ("fs", "key", "scheme", "_local")

    def __init__(self, fs: pafs.FileSystem | None, key: str, scheme: str = "") -> None:
        self.fs, self.scheme = fs, scheme
        self.key = key.rstrip("/") if fs is not None else key
        self._local = Path(key) if fs is None else None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def of(cls, location: str | os.PathLike[str] | StorePath) -> StorePath:
        if isinstance(location, StorePath):
            return location
        text = os.fspath(location)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not is_remote(text):
            return cls(None, text)
        scheme = text.split("://", 1)[0]
        fs, key = _filesystem(text.rstrip("/"))
        return cls(fs, key, scheme)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    @property
    def local(self) -> Path:
        """The local path; ``TypeError`` on an object store (callers that need a local file check
        :attr:`remote` first)."""
        if self._local is None:
            raise TypeError(f"{self} is on an object store, not a local path")
        return self._local

    @property
    def filesystem(self) -> pafs.FileSystem | None:
        """The pyarrow filesystem to hand to ``pyarrow.dataset`` / ``parquet`` (None: local paths)."""
        return self.fs

    # -- pure path operations ------------------------------------------------------------------------
    def _with_key(self, key: str) -> StorePath:
        return StorePath(self.fs, key, self.scheme)

    def __truediv__(self, other: str | os.PathLike[str]) -> StorePath:
        if self._local is not None:
            return StorePath(None, str(self._local / other))
        return self._with_key(str(PurePosixPath(self.key) / os.fspath(other)))

    @property
    def name(self) -> str:
        return self._local.name if self._local is not None else PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> StorePath:
        if self._local is not None:
            return StorePath(None, str(self._local.parent))
        return self._with_key(str(PurePosixPath(self.key).parent))

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def relative_to(self, other: StorePath) -> str:
        """This path relative to ``other`` (posix separators), ``ValueError`` when it is not below it."""
        if self._local is not None and other._local is not None:
            return self._local.resolve().relative_to(other._local.resolve()).as_posix()
        if self.fs is None or other.fs is None:
            raise ValueError(f"{self} is not below {other}")
        return PurePosixPath(self.key).relative_to(PurePosixPath(other.key)).as_posix()

    def resolve(self) -> StorePath:
        return StorePath(None, str(self._local.resolve())) if self._local is not None else self

    def __str__(self) -> str:
        return str(self._local) if self._local is not None else f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.local)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and str(self) == str(other)

    def __lt__(self, other: StorePath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    # -- reading ---------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        assert self.fs is not None
        return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        if self._local is not None:
            return self._local.exists()
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_file(self) -> bool:
        if self._local is not None:
            return self._local.is_file()
        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        if self._local is not None:
            return self._local.is_dir()
        return bool(self._info().type == pafs.FileType.Directory)

    def read_bytes(self) -> bytes:
        if self._local is not None:
            return self._local.read_bytes()
        assert self.fs is not None
        with self.fs.open_input_stream(self.key) as f:
            data: bytes = f.read()
        return data

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def iterdir(self) -> Iterator[StorePath]:
        """The entries right below this folder (none when it does not exist on an object store)."""
        if self._local is not None:
            for p in self._local.iterdir():
                yield StorePath(None, str(p))
            return
        assert self.fs is not None
        for info in self.fs.get_file_info(pafs.FileSelector(self.key, allow_not_found=True)):
            yield self._with_key(info.path)

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Entries right below this folder whose name matches ``pattern`` (no ``/`` in it)."""
        if self._local is not None:
            for q in self._local.glob(pattern):
                yield StorePath(None, str(q))
            return
        for p in self.iterdir():
            if fnmatch.fnmatchcase(p.name, pattern):
                yield p

    # -- writing ---------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Create the local folder; nothing on an object store (it has no folders)."""
        if self._local is not None:
            self._local.mkdir(parents=parents, exist_ok=exist_ok)

    def write_bytes(self, data: bytes | pa.Buffer) -> None:
        """Write the whole file. On an object store this is a single PUT: the object appears complete
        or not at all, and a process killed during it leaves nothing under this name."""
        if self._local is not None:
            self._local.write_bytes(bytes(data) if isinstance(data, pa.Buffer) else data)
            return
        assert self.fs is not None
        with self.fs.open_output_stream(self.key) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        if self._local is not None:
            self._local.unlink(missing_ok=missing_ok)
            return
        assert self.fs is not None
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete this folder and everything below it; nothing when it does not exist."""
        if self._local is not None:
            shutil.rmtree(self._local, ignore_errors=True)
            return
        assert self.fs is not None
        for info in self.fs.get_file_info(pafs.FileSelector(self.key, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                self.fs.delete_file(info.path)

    def copy_to(self, dst: StorePath) -> None:
        """Make ``dst`` a copy of this committed (immutable) file: a hard link or copy locally, a
        server-side copy on one object store, else read and write. ``dst`` appears whole."""
        if self._local is not None and dst._local is not None:
            dst._local.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst._local.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
            try:
                os.link(self._local, tmp)
            except OSError:
                shutil.copy2(self._local, tmp)
            os.replace(tmp, dst._local)
            return
        if self.fs is not None and dst.fs is not None and self.fs.equals(dst.fs):
            self.fs.copy_file(self.key, dst.key)
            return
        data = self.read_bytes()
        if dst._local is None:
            dst.write_bytes(data)
            return
        dst._local.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst._local.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dst._local)
        finally:
            tmp.unlink(missing_ok=True)


def open_dataset_paths(paths: list[StorePath]) -> tuple[list[str], Any]:
    """``(paths, filesystem)`` for :func:`pyarrow.dataset.dataset` over files of one store."""
    if not paths or paths[0].fs is None:
        return [str(p) for p in paths], None
    return [p.key for p in paths], paths[0].fs


# -- inputs by URI (probe images, manifests, annotation files) -------------------------------------

_STORE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
_INPUT_FS: dict[tuple[str, ...], tuple[pafs.FileSystem, str]] = {}


def input_path(location: str | os.PathLike[str]) -> StorePath:
    """``StorePath.of`` for files read many times by one process (one probe image after another): the
    filesystem of a bucket is made once per process and environment, not once per file."""
    text = os.fspath(location)
    if not is_remote(text):
        return StorePath.of(text)
    scheme, rest = text.split("://", 1)
    bucket, _, key = rest.partition("/")
    cache_key = (scheme, bucket, *(os.environ.get(v, "") for v in _STORE_ENV))
    hit = _INPUT_FS.get(cache_key)
    if hit is None:
        hit = _INPUT_FS[cache_key] = _filesystem(f"{scheme}://{bucket}")
    fs, root = hit
    return StorePath(fs, f"{root.rstrip('/')}/{key}" if key else root, scheme)


def join_input(base: str | os.PathLike[str], rel: str) -> str:
    """``rel`` as named by a file in folder ``base``: a URI or an absolute path as it is, else below
    ``base`` (a local folder or a URI)."""
    if is_remote(rel) or os.path.isabs(rel):
        return rel
    if is_remote(base):
        return f"{str(base).rstrip('/')}/{rel}"
    return str(Path(base) / rel)


def normalized(location: str) -> str:
    """A key to match one file named two ways: URIs as they are, local paths absolute and normalised."""
    return location if is_remote(location) else os.path.normpath(os.path.abspath(location))


def list_files(root: StorePath, stats: bool = True) -> Iterator[tuple[str, int, int]]:
    """Every file below the folder ``root`` (recursive): ``(location, size, mtime_ns)``, the location a
    local path or a URI. One listing request per 1,000 objects on an object store (which gives the
    sizes and times with the names); locally each file is stat'ed only with ``stats`` (else -1, -1)."""
    if root.fs is None:
        for dirpath, dirnames, filenames in os.walk(root.local):
            dirnames.sort()
            for name in filenames:
                full = os.path.join(dirpath, name)
                st = os.stat(full) if stats else None
                yield full, (st.st_size if st else -1), (st.st_mtime_ns if st else -1)
        return
    for info in root.fs.get_file_info(pafs.FileSelector(root.key, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            mtime = info.mtime_ns if info.mtime_ns is not None else -1
            yield f"{root.scheme}://{info.path}", int(info.size or 0), int(mtime)


def read_table_file(location: str | os.PathLike[str]) -> pa.Table:
    """A CSV or Parquet file (by its suffix) from a local path or a URI."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path = StorePath.of(location)
    data = pa.BufferReader(path.read_bytes())
    return pq.read_table(data) if path.suffix.lower() in (".parquet", ".pq") else pcsv.read_csv(data)


def _store_error(e: BaseException) -> str:
    """The store's error code (``AWS Error ACCESS_DENIED``), or the first line of the message."""
    text = str(e)
    m = re.search(r"AWS Error [A-Z_]+", text)
    return m.group(0) if m else (text.strip().splitlines() or [type(e).__name__])[0][:200]


_CREDENTIALS = (
    "set the store's standard credentials in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "or AWS_PROFILE; AWS_ENDPOINT_URL for an S3-compatible server; GOOGLE_APPLICATION_CREDENTIALS for GCS)"
)


def storage_problem(key: str, location: str, write: bool = True) -> str | None:
    """One line when ``location`` is on an object store that this process cannot write (``write``) or
    read: the URI does not resolve, the credentials are refused, the bucket is missing, or a test write
    (a listing, to read) fails. Local paths: None (their folders are created as needed, inputs are
    checked where they are read). The line names the key and the fix and holds no credential
    (pyarrow's errors name the bucket and the error code, never a key)."""
    if not is_remote(location):
        return None
    try:
        root = StorePath.of(location)
    except (OSError, ValueError, pa.ArrowException) as e:
        why = _store_error(e)
        return f"{key} {location!r}: not a storage URI pyarrow resolves ({why}); write s3://BUCKET/PREFIX, gs://..."
    assert root.fs is not None
    bucket = root.key.split("/", 1)[0]
    probe = root / "_preflight" / uuid.uuid4().hex
    try:
        if root.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            return f"{key} {location!r}: bucket {bucket!r} does not exist; create it or fix the bucket name"
        if write:
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
        else:
            root.fs.get_file_info(pafs.FileSelector(root.key, allow_not_found=True))
    except OSError as e:
        return f"{key} {location!r}: the store refused access ({_store_error(e)}); {_CREDENTIALS}"
    return None
