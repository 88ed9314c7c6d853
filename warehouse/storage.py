"""Where a warehouse's files live: a local folder, or object storage (s3://, gs://, any fsspec URL).

Every file the warehouse writes is written whole or not at all, and no writer needs a lock:
- a local folder: a temporary name beside the target, then a rename (distill.files);
- object storage: one PUT per file (a multipart upload is visible only when it completes), so a file
  is the old object or the new one, never half of one; there is no rename and no temporary object.
Readers list the store and read what is there; a killed writer leaves nothing a reader sees.

Endpoint and credentials come from where the AWS tools look: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, or the profile in
~/.aws. They are never printed or stored: messages and run records name the URL only.
"""
from __future__ import annotations

import fnmatch
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from distill.errors import DistillError
from distill.files import TMP_PREFIX, replacing


class StorageError(DistillError):
    """The warehouse's store cannot be read or written: an unreachable server, a missing bucket, no permission."""


def is_url(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def _s3(bucket_path: str) -> pafs.S3FileSystem:
    """pyarrow's S3 client, pointed where the AWS variables say (it does not read AWS_ENDPOINT_URL itself)."""
    kw: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(os.environ.get("DISTILL_S3_ATTEMPTS", "4"))),
                "connect_timeout": 10, "request_timeout": 120}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw["endpoint_override"], kw["scheme"] = (host, scheme) if host else (endpoint, "https")
        kw["endpoint_override"] = kw["endpoint_override"].rstrip("/")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    elif endpoint:
        kw["region"] = "us-east-1"  # a custom endpoint (MinIO, moto, R2) has no region to look up
    return pafs.S3FileSystem(**kw)


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) for a warehouse URL: pyarrow's own clients for s3:// and gs://,
    fsspec's for any other scheme it knows (hf://, az://, memory://, …)."""
    scheme, _, rest = url.partition("://")
    if scheme in ("s3", "s3a"):
        return _s3(rest), rest.rstrip("/")
    if scheme in ("gs", "gcs"):
        fs, path = pafs.FileSystem.from_uri(url)
        return fs, path.rstrip("/")
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with datasets
        raise DistillError(f"warehouse {url}: fsspec is needed for {scheme}:// URLs") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise DistillError(f"warehouse {url}: no filesystem for {scheme}:// ({e})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")


class Storage:
    """A warehouse root. Paths given to its methods are relative to the root, with '/' separators."""

    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        self.local = not is_url(root)
        if self.local:
            self.path = Path(root.removeprefix("file://")).expanduser().absolute()
            self.url = str(self.path)
            self.fs, self.base = pafs.LocalFileSystem(), str(self.path)
        else:
            self.path = None
            self.url = root.rstrip("/")
            self.fs, self.base = filesystem(self.url)

    def __str__(self) -> str:
        return self.url

    def full(self, rel: str) -> str:
        """The path of `rel` in the filesystem (what pyarrow is given)."""
        return f"{self.base}/{rel}" if rel else self.base

    def show(self, rel: str = "") -> str:
        """`rel` as a user writes it: a local path or a URL."""
        return f"{self.url}/{rel}" if rel else self.url

    def _fail(self, what: str, rel: str, e: Exception) -> StorageError:
        reason = " ".join(str(e).split())[:300]
        return StorageError(f"warehouse {self.url}: cannot {what} {rel or '/'}: {reason}")

    # -- single files ----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if self.local:
            return (self.path / rel).exists()
        try:
            return self.fs.get_file_info(self.full(rel)).type != pafs.FileType.NotFound
        except OSError as e:
            raise self._fail("read", rel, e) from e

    @contextmanager
    def _reading(self, rel: str):
        """A missing file is FileNotFoundError whatever the store says; any other failure a StorageError."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as e:
            if "not found" in str(e).lower() or "does not exist" in str(e).lower() or "NoSuchKey" in str(e):
                raise FileNotFoundError(self.show(rel)) from e
            raise self._fail("read", rel, e) from e

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; FileNotFoundError when there is none."""
        if self.local:
            return (self.path / rel).read_bytes()
        with self._reading(rel), self.fs.open_input_stream(self.full(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str):
        """A JSON file, parsed. An object replaced while it is read can come back cut (the client learns the
        size, then reads that many bytes of whichever version is there): read it again until it parses."""
        for attempt in range(6):
            data = self.read_bytes(rel)
            try:
                return json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if self.local or attempt == 5:
                    raise DistillError(f"warehouse {self.url}: {rel} is not valid JSON") from None
                time.sleep(0.02 * 2 ** attempt)

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write a file whole or not at all (see the module's doc); returns its path or URL."""
        if self.local:
            with replacing(self.path / rel) as tmp:
                tmp.write_bytes(data)
            return str(self.path / rel)
        try:
            with self.fs.open_output_stream(self.full(rel)) as f:
                f.write(data)
        except OSError as e:
            raise self._fail("write", rel, e) from e
        return self.show(rel)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def delete(self, rel: str) -> None:
        """Remove a file; nothing happens when it is gone already."""
        if self.local:
            (self.path / rel).unlink(missing_ok=True)
            return
        try:
            self.fs.delete_file(self.full(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            if "not found" not in str(e).lower():
                raise self._fail("delete", rel, e) from e

    def list(self, folder: str, pattern: str = "*", recursive: bool = False) -> list[str]:
        """Relative paths of the files under `folder` whose path below it matches `pattern` (fnmatch),
        sorted; temporary files (`.tmp-*`) never match."""
        if self.local:
            base = self.path / folder
            found = base.rglob("*") if recursive else base.glob("*")
            names = [p.relative_to(base).as_posix() for p in found if p.is_file()] if base.is_dir() else []
        else:
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(self.full(folder), recursive=recursive,
                                                                allow_not_found=True))
            except OSError as e:
                raise self._fail("list", folder, e) from e
            prefix = self.full(folder).rstrip("/") + "/"
            names = [i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)]
        keep = [n for n in names if fnmatch.fnmatchcase(n, pattern) and not Path(n).name.startswith(TMP_PREFIX)]
        return sorted(f"{folder}/{n}" if folder else n for n in keep)

    # -- Parquet ---------------------------------------------------------------------------------
    def write_parquet(self, rel: str, table: pa.Table, **kw) -> str:
        if self.local:
            with replacing(self.path / rel) as tmp:
                pq.write_table(table, tmp, **kw)
            return str(self.path / rel)
        try:
            pq.write_table(table, self.full(rel), filesystem=self.fs, **kw)
        except OSError as e:
            raise self._fail("write", rel, e) from e
        return self.show(rel)

    def read_parquet(self, rel: str, **kw) -> pa.Table:
        with self._reading(rel):
            return pq.read_table(self.full(rel), filesystem=self.fs, **kw)

    def parquet_metadata(self, rel: str) -> pq.FileMetaData:
        with self._reading(rel), self.fs.open_input_file(self.full(rel)) as f:
            return pq.read_metadata(f)

    def dataset(self, rels: list[str], schema: pa.Schema) -> ds.Dataset:
        """The Parquet files `rels` as one Arrow dataset of `schema` (columns a file lacks read as null)."""
        try:
            return ds.dataset([self.full(r) for r in rels], schema=schema, format="parquet", filesystem=self.fs)
        except OSError as e:
            raise self._fail("read", rels[0] if rels else "", e) from e
