"""Where an index lives: a local folder or an object-storage prefix (``s3://``, ``gs://``, ``az://``).

One small interface over both, used by :class:`imgrag.retrieval.index.Index` for its own small files
(manifest, skipped list, writer lease) and by the LanceDB store for its connection options:

- Local folders keep their crash-safe semantics: a write goes to a temp file, is fsynced and renamed.
- Object stores get single-object PUTs, which are atomic by nature (a reader sees the old object or the
  new one, never half). ``create_exclusive`` (create only if absent) uses S3's conditional PUT
  (``If-None-Match: *``) through boto3 when it is installed; elsewhere it is best effort.
- Filesystems come from :mod:`pyarrow.fs`; credentials and endpoint from the usual environment
  variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
  ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (S3-compatible servers such as
  MinIO); Google Cloud and Azure read their own (``GOOGLE_APPLICATION_CREDENTIALS``,
  ``AZURE_STORAGE_ACCOUNT_NAME`` …). Secrets are passed on, never logged or stored in the index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from imgrag.retrieval import atomic
from imgrag.retrieval.errors import ImgragError

#: URI schemes served by object storage (pyarrow.fs and Lance's object_store understand them all).
REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")


def is_uri(spec: Any) -> bool:
    """True for an object-storage URI such as ``s3://bucket/prefix``."""
    s = str(spec)
    scheme, sep, _ = s.partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


class Location:
    """An index root. ``root`` is a :class:`~pathlib.Path` for a local folder, the URI string otherwise."""

    def __init__(self, spec: str | os.PathLike) -> None:
        if isinstance(spec, Location):
            spec = spec.root
        self.remote = is_uri(spec)
        if self.remote:
            uri = str(spec).rstrip("/")
            scheme, _, rest = uri.partition("://")
            if not rest.split("/", 1)[0]:
                raise ImgragError(f"{uri!r} names no bucket; use {scheme}://BUCKET/PREFIX")
            self.scheme = scheme.lower()
            self.root: Path | str = uri
            self._fs = None
            self._base = ""
        else:
            self.scheme = "file"
            self.root = Path(spec).expanduser()

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Location({str(self.root)!r})"

    # --- names ---------------------------------------------------------------------------------
    def join(self, name: str) -> Path | str:
        """A child as a local path or a URI (what LanceDB and pyarrow take)."""
        if self.remote:
            return f"{self.root}/{name}"
        return Path(self.root) / name

    @property
    def local(self) -> bool:
        return not self.remote

    # --- filesystem ----------------------------------------------------------------------------
    @property
    def fs(self):
        """The :mod:`pyarrow.fs` filesystem of a remote location (created once)."""
        if self._fs is None:
            self._fs, self._base = filesystem_for(str(self.root))
        return self._fs

    def _key(self, name: str) -> str:
        self.fs  # noqa: B018 - sets _base
        return f"{self._base}/{name}" if name else self._base

    def exists(self, name: str) -> bool:
        if self.local:
            return (Path(self.root) / name).exists()
        import pyarrow.fs as pfs

        return self._call(lambda: self.fs.get_file_info(self._key(name)).type != pfs.FileType.NotFound, name)

    def read_bytes(self, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        if self.local:
            p = Path(self.root) / name
            try:
                return p.read_bytes()
            except FileNotFoundError:
                return None
        import pyarrow.fs as pfs

        def read() -> bytes | None:
            key = self._key(name)
            if self.fs.get_file_info(key).type == pfs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(key) as f:
                return f.read()
        return self._call(read, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace ``name`` atomically (readers see the old or the new content, never half)."""
        if self.local:
            # looked up on the module at call time: the crash tests swap in a non-atomic writer there
            atomic.atomic_write_bytes(Path(self.root) / name, data)
            return

        def write() -> None:
            with self.fs.open_output_stream(self._key(name)) as f:  # one PUT: atomic on object stores
                f.write(data)
        self._call(write, name)

    def create_exclusive(self, name: str, data: bytes, if_match: str | None = None) -> bool:
        """Create ``name`` only if it does not exist (or, with ``if_match``, only if its ETag is that).

        Returns False when another writer won. Conditional on local folders (O_EXCL) and on S3 (with
        boto3 installed); on other object stores it is a plain write followed by a read-back check.
        """
        if self.local:
            p = Path(self.root) / name
            if if_match is not None:
                self.write_bytes(name, data)
                return True
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.scheme == "s3":
            s3 = _boto3_client()
            if s3 is not None:
                bucket, _, key = str(self.root)[len("s3://"):].partition("/")
                key = f"{key}/{name}" if key else name
                kw = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"}
                try:
                    s3.put_object(Bucket=bucket, Key=key, Body=data, **kw)
                    return True
                except Exception as e:  # noqa: BLE001 - botocore.exceptions.ClientError
                    code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
                    if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                        return False
                    raise ImgragError(f"cannot write {self.join(name)} ({_short(e)})") from e
        if if_match is None and self.exists(name):
            return False
        self.write_bytes(name, data)
        return self.read_bytes(name) == data

    def etag(self, name: str) -> str | None:
        """The S3 ETag of ``name`` (None where unknown or absent)."""
        if self.scheme != "s3":
            return None
        s3 = _boto3_client()
        if s3 is None:
            return None
        bucket, _, key = str(self.root)[len("s3://"):].partition("/")
        try:
            return s3.head_object(Bucket=bucket, Key=f"{key}/{name}" if key else name)["ETag"]
        except Exception:  # noqa: BLE001 - absent or not allowed: no etag
            return None

    def delete(self, name: str) -> None:
        if self.local:
            p = Path(self.root) / name
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            return
        import pyarrow.fs as pfs

        def rm() -> None:
            key = self._key(name)
            info = self.fs.get_file_info(key)
            if info.type == pfs.FileType.File:
                self.fs.delete_file(key)
            elif info.type == pfs.FileType.Directory:
                self.fs.delete_dir(key)
        self._call(rm, name)

    def mkdir(self) -> None:
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        # object stores have no folders: the first object written creates the prefix

    def children(self) -> list[str]:
        """Names directly under the root."""
        if self.local:
            p = Path(self.root)
            return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
        import pyarrow.fs as pfs

        def ls() -> list[str]:
            sel = pfs.FileSelector(self._key(""), recursive=False, allow_not_found=True)
            return sorted(i.base_name for i in self.fs.get_file_info(sel))
        return self._call(ls, "")

    def size(self, name: str = "") -> int:
        """Bytes stored under the root (or under ``name``)."""
        if self.local:
            total = 0
            for dirpath, _dirs, files in os.walk(Path(self.root) / name if name else Path(self.root)):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass
            return total
        import pyarrow.fs as pfs

        def du() -> int:
            sel = pfs.FileSelector(self._key(name), recursive=True, allow_not_found=True)
            return sum(int(i.size or 0) for i in self.fs.get_file_info(sel) if i.type == pfs.FileType.File)
        return self._call(du, name)

    def storage_options(self) -> dict[str, str]:
        """Options for LanceDB / Lance (object_store) matching this location and the environment."""
        return storage_options_for(str(self.root)) if self.remote else {}

    def _call(self, fn, name: str):
        try:
            return fn()
        except ImgragError:
            raise
        except (OSError, ValueError) as e:
            raise ImgragError(f"cannot access {self.join(name)} ({_short(e)}); check the URI, the credentials "
                              "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY …) and the endpoint (AWS_ENDPOINT_URL)") from e


def filesystem_for(uri: str):
    """``(pyarrow.fs.FileSystem, path inside it)`` for an object-storage URI, configured from the environment."""
    import pyarrow.fs as pfs

    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    try:
        if scheme == "s3":
            kw: dict[str, Any] = {}
            ep = _s3_endpoint()
            if ep:
                u = urlparse(ep if "://" in ep else f"https://{ep}")
                kw["endpoint_override"] = u.netloc
                kw["scheme"] = u.scheme or "https"
            region = _s3_region()
            if region:
                kw["region"] = region
            elif ep:
                kw["region"] = "us-east-1"
            return pfs.S3FileSystem(**kw), rest.rstrip("/")
        if scheme in ("gs", "gcs"):
            return pfs.GcsFileSystem(), rest.rstrip("/")
        fs, path = pfs.FileSystem.from_uri(uri)  # az://, abfs(s)://
        return fs, path.rstrip("/")
    except (OSError, ValueError, pa_errors()) as e:
        raise ImgragError(f"cannot open {uri} ({_short(e)}); check the URI and the storage credentials") from e


def pa_errors():
    import pyarrow as pa

    return pa.ArrowException


def storage_options_for(uri: str) -> dict[str, str]:
    """LanceDB/Lance ``storage_options`` for ``uri`` built from the environment (S3 endpoint, region, keys).

    Lance also reads these variables itself; passing them explicitly makes ``AWS_ENDPOINT_URL`` and plain
    ``http://`` endpoints (local S3-compatible servers) work without extra variables.
    """
    scheme = uri.partition("://")[0].lower()
    opts: dict[str, str] = {}
    if scheme == "s3":
        ep = _s3_endpoint()
        if ep:
            opts["aws_endpoint"] = ep
            if ep.startswith("http://"):
                opts["allow_http"] = "true"
        region = _s3_region() or ("us-east-1" if ep else None)
        if region:
            opts["aws_region"] = region
        for env, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                         ("AWS_SESSION_TOKEN", "aws_session_token")):
            if os.environ.get(env):
                opts[key] = os.environ[env]
    return opts


def _boto3_client():
    """A boto3 S3 client from the environment, or None when boto3 is not installed."""
    try:
        import boto3
    except ImportError:
        return None
    kw: dict[str, Any] = {}
    if _s3_endpoint():
        kw["endpoint_url"] = _s3_endpoint()
    region = _s3_region()
    if region or _s3_endpoint():
        kw["region_name"] = region or "us-east-1"
    return boto3.client("s3", **kw)


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
