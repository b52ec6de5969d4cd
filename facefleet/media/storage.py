"""Inputs and outputs as URIs: local paths, or object storage through pyarrow.fs.

    local:   /data/in.mp4, data/in.mp4, file:///data/in.mp4
    remote:  s3://bucket/key, gs://bucket/key, hdfs://namenode:port/path

Credentials and region come from the environment as pyarrow reads it (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION / AWS_REGION, ~/.aws). The
endpoint of an S3-compatible store (MinIO, moto, Ceph...) is read here, from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, because pyarrow's S3FileSystem does not.

The URI helpers are pure; only `filesystem` and the functions that use it touch the network.
Failures a user can cause become one-line InputError / OutputError messages that name the
URI, the endpoint and the bucket, never a traceback.

Credentials are taken from the environment only: a URI or endpoint with credentials in it
(s3://KEY:SECRET@bucket/key, http://user:pass@host) is refused, and the message that says
so shows it with the credentials replaced by "***", so that a secret typed into a job
never reaches the job store, a log or a report.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import mimetypes
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

import pyarrow.fs as pafs

from facefleet.errors import FacefleetError, InputError, OutputError
from facefleet.media.files import TMP_MARK, atomic_output

REMOTE_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs"})
GLOB_CHARS = frozenset("*?[")
COPY_BLOCK = 8 << 20  # bytes per write when uploading a finished output
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the first one set wins, as in the AWS SDKs
# Variables whose values shape an S3 filesystem (pyarrow reads most of them itself): a
# change to any of them makes a new filesystem rather than reusing a cached one.
S3_ENV = ENDPOINT_VARS + (
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CA_BUNDLE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


# --- URIs (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A remote URI taken apart: s3://bucket/some/key -> ("s3", "bucket", "some/key")."""

    scheme: str
    bucket: str  # the bucket, or host:port for hdfs
    key: str  # the path inside it, without a leading "/"

    @property
    def fs_path(self) -> str:
        """The path pyarrow's filesystem for this scheme expects."""
        if self.scheme == "hdfs":
            return "/" + self.key
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def uri_of(self, fs_path: str) -> str:
        """The URI of another path of the same filesystem (e.g. an entry of a listing)."""
        if self.scheme == "hdfs":
            return f"hdfs://{self.bucket}/{fs_path.lstrip('/')}"
        return f"{self.scheme}://{fs_path}"


def scheme_of(uri: str | os.PathLike) -> str:
    head, sep, _ = str(uri).partition("://")
    return head.lower() if sep and head.isalnum() else ""


def is_remote(uri: str | os.PathLike) -> bool:
    """True for object storage and HDFS URIs; a plain path or a file:// URI is local."""
    return scheme_of(uri) in REMOTE_SCHEMES


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
# user:secret@ where the secret may hold '/' (AWS secret keys do); in free text this also
# hides e.g. "nn:8020/dir/" of hdfs://nn:8020/dir/a@b.mp4: safe rather than exact
_COLON_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^@\s]*:[^@\s]*@")
CREDENTIALS_REFUSED = (
    "credentials in a URI are not accepted (they would be stored with the job); "
    "give them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws instead"
)


def redact(text: str) -> str:
    """`text` with the user-info part of every URL in it shown as `***`:
    s3://KEY:SECRET@bucket/k -> s3://***@bucket/k, http://u:p@host -> http://***@host."""
    return _USERINFO.sub(r"\1***@", _COLON_USERINFO.sub(r"\1***@", text))


def has_credentials(uri: str | os.PathLike) -> bool:
    """Whether a remote URI may carry a secret before its bucket or host.

    s3:// and gs://: a bucket name cannot hold '@' or ':', so either one means user info
    (an AWS secret key may hold '/', so the "bucket" may end inside the secret). hdfs://:
    a 'user:password@' (a bare 'user@' names the HDFS user and is kept), or a port that
    is not a number where an '@' follows.
    """
    uri = str(uri)
    scheme = scheme_of(uri)
    if scheme not in REMOTE_SCHEMES:
        return False
    rest = uri.partition("://")[2]
    authority = rest.partition("/")[0]
    if scheme != "hdfs":
        return "@" in authority or ":" in authority
    if "@" in authority:
        return ":" in authority.rpartition("@")[0]
    port = authority.partition(":")[2]
    return bool(port) and not port.isdigit() and "@" in rest


def _without_credentials(uri: str) -> str:
    """A URI refused for its credentials, as messages show it: s3://***@bucket/key."""
    scheme = scheme_of(uri)
    return f"{scheme}://***@{uri.rpartition('@')[2]}" if "@" in uri else f"{scheme}://***"


def parse(uri: str) -> Location:
    """Split a remote URI. Object keys may hold any character ('?' and '#' included), so
    this does not parse it as a URL. A URI with credentials in it is refused."""
    scheme = scheme_of(uri)
    if scheme not in REMOTE_SCHEMES:
        raise InputError(redact(uri), "not an object storage URI (s3://, gs://, hdfs://)")
    if has_credentials(uri):
        raise InputError(_without_credentials(uri), CREDENTIALS_REFUSED)
    bucket, _, key = uri.partition("://")[2].partition("/")
    if not bucket:
        raise InputError(uri, "names no bucket; write it as s3://BUCKET/KEY")
    return Location(scheme, bucket, key)


def local_path(uri: str | os.PathLike) -> str:
    """The filesystem path of a local URI: file:///a%20b.mp4 -> /a b.mp4; plain paths unchanged."""
    uri = str(uri)
    if scheme_of(uri) != "file":
        return uri
    rest = uri.partition("://")[2]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    return unquote(rest)


def join(dir_uri: str, name: str) -> str:
    """`name` inside the directory (or prefix) `dir_uri`."""
    if scheme_of(dir_uri):
        return f"{dir_uri.rstrip('/')}/{name.lstrip('/')}"
    return os.path.join(dir_uri, name)


def has_glob(text: str) -> bool:
    return any(c in GLOB_CHARS for c in text)


def glob_match(pattern: str, path: str) -> bool:
    """Shell-style matching of '/'-separated paths, as Python's glob (recursive) matches:
    '*', '?' and '[...]' stay within one name, '**' spans any number of names (none too),
    and a name starting with '.' is only matched by a pattern that starts with '.'."""
    return _match_parts(pattern.split("/"), path.split("/"))


def _match_name(pattern: str, name: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _match_parts(patterns: list[str], names: list[str]) -> bool:
    if not patterns:
        return not names
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        for skip in range(len(names) + 1):
            if _match_parts(rest, names[skip:]):
                return True
            if skip < len(names) and names[skip].startswith("."):
                return False  # '**' does not descend into hidden directories
        return False
    return bool(names) and _match_name(head, names[0]) and _match_parts(rest, names[1:])


def normalize_extensions(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def wanted(path: str, extensions: frozenset[str]) -> bool:
    """A media file to take from a directory or glob: a known extension, and visible."""
    name = path.rsplit("/", 1)[-1]
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def parse_endpoint(url: str, name: str = "endpoint") -> dict[str, str]:
    """AWS_ENDPOINT_URL's http://host:port as S3FileSystem options (no scheme: https)."""
    text = url.strip()
    if "@" in text:  # an endpoint is scheme://host[:port]: '@' can only start a host after credentials
        raise FacefleetError(
            f"{name}: credentials in the endpoint URL are not accepted (the URL is not shown: it holds them); "
            "give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "https", text
    rest = rest.rstrip("/")
    if scheme.lower() not in ("http", "https") or not rest or "/" in rest:
        raise FacefleetError(f"{name}={url!r}: expected http://HOST:PORT or https://HOST[:PORT]")
    return {"endpoint_override": rest, "scheme": scheme.lower()}


def s3_options(environ: Mapping[str, str]) -> dict[str, str]:
    """S3FileSystem options that pyarrow does not take from the environment by itself.

    pyarrow (through the AWS SDK) reads credentials and region; it ignores
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_CA_BUNDLE, so they are read here.
    AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true turns the endpoint off, as in the AWS SDKs.
    """
    options = {}
    if environ.get("AWS_CA_BUNDLE", "").strip():
        options["tls_ca_file_path"] = environ["AWS_CA_BUNDLE"].strip()
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return options
    for name in ENDPOINT_VARS:
        if environ.get(name, "").strip():
            return {**options, **parse_endpoint(environ[name], name)}
    return options


def endpoint_label(loc: Location, environ: Mapping[str, str]) -> str:
    """Where a location's data lives, for messages."""
    if loc.scheme == "s3":
        options = s3_options(environ)
        if "endpoint_override" in options:
            return f"{options['scheme']}://{options['endpoint_override']}"
        return "AWS S3"
    if loc.scheme == "hdfs":
        return f"hdfs://{loc.bucket}"
    return "Google Cloud Storage"


def failure_reason(message: str, loc: Location, endpoint: str) -> str:
    """One line that says why a storage call failed, from pyarrow's (AWS SDK's) message."""
    if "NETWORK_CONNECTION" in message or "curlCode" in message:
        detail = re.search(r"curlCode: \d+, ([^;(]+)", message)
        why = detail.group(1).strip() if detail else "network error"
        return f"cannot reach the object store at {endpoint} ({why}); check the endpoint (AWS_ENDPOINT_URL) and the network"
    if "NO_SUCH_BUCKET" in message or "NoSuchBucket" in message or "bucket does not exist" in message.lower():
        return missing_bucket(loc, endpoint)
    if "ACCESS_DENIED" in message or "AccessDenied" in message or "HTTP status 403" in message:
        return f"access denied by {endpoint} to bucket {loc.bucket!r}; check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    text = " ".join(message.split())
    text = re.sub(r"^When [^:]*: ", "", text)  # pyarrow's "When getting information for key ... :"
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", text)
    return f"storage error at {endpoint}: {text[:300]}"


def missing_bucket(loc: Location, endpoint: str) -> str:
    return f"bucket {loc.bucket!r} does not exist at {endpoint}"


# --- filesystems (the edge) -------------------------------------------------------------


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for a URI, and the path to pass it.

    Remote filesystems are cached per (scheme, bucket, endpoint and the rest of the AWS
    environment), so every call for one bucket shares one client and its connections.
    """
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    loc = parse(uri)
    env = tuple((name, os.environ.get(name, "")) for name in S3_ENV) if loc.scheme == "s3" else ()
    return _cached_filesystem(loc.scheme, loc.bucket, env), loc.fs_path


@functools.lru_cache(maxsize=64)
def _cached_filesystem(scheme: str, bucket: str, env: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    if scheme == "s3":
        environ = dict(env)
        options = s3_options(environ)
        if "endpoint_override" not in options and not (environ["AWS_REGION"] or environ["AWS_DEFAULT_REGION"]):
            options["region"] = _bucket_region(bucket)
        return pafs.S3FileSystem(**{k: v for k, v in options.items() if v})
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}/")
    return fs


def _bucket_region(bucket: str) -> str:
    """An AWS bucket's own region when none is configured: AWS answers requests sent to
    another region with a redirect that the S3 client does not follow. '' if unknown."""
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return ""  # let the SDK's own lookup decide; the request that follows says what is wrong


def clear_cache() -> None:
    """Forget cached filesystems (after changing credentials or endpoints in-process)."""
    _cached_filesystem.cache_clear()


class _Remote:
    """One remote URI with its filesystem, turning pyarrow's OSErrors into one-line reasons."""

    def __init__(self, uri: str):
        self.uri = uri
        self.loc = parse(uri)
        self.endpoint = endpoint_label(self.loc, os.environ)
        try:
            self.fs, self.path = filesystem(uri)
        except OSError as exc:  # HDFS connects when its filesystem is made
            raise InputError(uri, self.reason(exc)) from None

    def reason(self, exc: OSError) -> str:
        return failure_reason(str(exc), self.loc, self.endpoint)

    def info(self, path: str | None = None) -> pafs.FileInfo:
        """get_file_info; a missing bucket is an error, not a missing file."""
        try:
            info = self.fs.get_file_info(path or self.path)
            if info.type == pafs.FileType.NotFound and self.loc.key and not self.bucket_exists():
                raise InputError(self.uri, missing_bucket(self.loc, self.endpoint))
        except OSError as exc:
            raise InputError(self.uri, self.reason(exc)) from None
        return info

    def bucket_exists(self) -> bool:
        if self.loc.scheme == "hdfs":
            return True
        return self.fs.get_file_info(self.loc.bucket).type != pafs.FileType.NotFound

    def listing(self, prefix_path: str) -> list[str]:
        """Every file under a prefix (recursively), as filesystem paths."""
        try:
            entries = self.fs.get_file_info(pafs.FileSelector(prefix_path, recursive=True, allow_not_found=True))
            if not entries and not self.bucket_exists():
                raise InputError(self.uri, missing_bucket(self.loc, self.endpoint))
        except OSError as exc:
            raise InputError(self.uri, self.reason(exc)) from None
        return [e.path for e in entries if e.type == pafs.FileType.File]

    def open_file(self):
        try:
            return self.fs.open_input_file(self.path)
        except FileNotFoundError:
            pass  # find out why, below (a HEAD request fewer when the object is there)
        except OSError as exc:
            raise InputError(self.uri, self.reason(exc)) from None
        if self.info().type == pafs.FileType.Directory:
            raise InputError(self.uri, "is a directory (a prefix), not a file")
        raise InputError(self.uri, "file not found")


# --- inputs -----------------------------------------------------------------------------


def expand_inputs(items: list[str], extensions: frozenset[str]) -> list[str]:
    """The input files that `items` name, in order, each once.

    A file is taken as given, whatever its extension. A directory (locally) or a prefix
    ending in '/' or naming a "directory" (in object storage) gives every file under it
    whose extension is in `extensions`, sorted; hidden files ('.name') are skipped. A glob
    ('*', '?', '[...]', '**') gives the matching files with those extensions, and all of
    them under a matching directory. Raises InputError naming the item when it matches
    nothing, or its store cannot be reached.
    """
    extensions = normalize_extensions(extensions)
    found: list[str] = []
    for item in items:
        found.extend(_expand_remote(item, extensions) if is_remote(item) else _expand_local(item, extensions))
    return list(dict.fromkeys(found))


def _kinds(extensions: frozenset[str]) -> str:
    """The extensions looked for, when few enough to name in a one-line message."""
    return f" ({', '.join(sorted(extensions))})" if len(extensions) <= 4 else ""


def _expand_local(item: str, extensions: frozenset[str]) -> list[str]:
    path = local_path(item)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = _walk(path, extensions)
        if not files:
            raise InputError(item, f"directory holds no file with a media extension{_kinds(extensions)}")
        return files
    if not has_glob(path):
        raise InputError(item, "not a regular file or directory" if os.path.lexists(path) else "file not found")
    files: list[str] = []
    matches = sorted(glob.glob(path, recursive=True))
    for match in matches:
        if os.path.isdir(match):
            files.extend(_walk(match, extensions))
        elif os.path.isfile(match) and wanted(match, extensions):
            files.append(match)
    if not files:
        what = "matches nothing" if not matches else f"matches no file with a media extension{_kinds(extensions)}"
        raise InputError(item, what)
    return files


def _walk(top: str, extensions: frozenset[str]) -> list[str]:
    files = []
    for root, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(os.path.join(root, n) for n in names if wanted(n, extensions))
    return sorted(files)


def _expand_remote(item: str, extensions: frozenset[str]) -> list[str]:
    remote = _Remote(item)
    loc = remote.loc
    if has_glob(loc.key):
        parts = loc.key.split("/")
        fixed = next(i for i, part in enumerate(parts) if has_glob(part))
        base = Location(loc.scheme, loc.bucket, "/".join(parts[:fixed]))
        keys = [(path, _key_of(loc, path)) for path in remote.listing(base.fs_path)]
        files = sorted(loc.uri_of(path) for path, key in keys if wanted(key, extensions) and _under_match(loc.key, key))
        if not files:
            raise InputError(item, f"matches no object with a media extension{_kinds(extensions)}")
        return files
    if loc.key and not loc.key.endswith("/"):
        info = remote.info()
        if info.type == pafs.FileType.File:
            return [item]
        if info.type == pafs.FileType.NotFound:
            raise InputError(item, "file not found (no such object or prefix)")
    files = sorted(loc.uri_of(p) for p in remote.listing(loc.fs_path.rstrip("/")) if _visible_under(loc, p, extensions))
    if not files:
        raise InputError(item, f"no object with a media extension{_kinds(extensions)} under this prefix")
    return files


def _key_of(loc: Location, fs_path: str) -> str:
    return fs_path.lstrip("/") if loc.scheme == "hdfs" else fs_path.partition("/")[2]


def _under_match(pattern: str, key: str) -> bool:
    """The key matches the glob, or lies under a "directory" that matches it (and not
    under a hidden one below that), as a local glob followed by a directory walk."""
    parts = key.split("/")
    for n in range(len(parts), 0, -1):
        if glob_match(pattern, "/".join(parts[:n])):
            return not any(part.startswith(".") for part in parts[n:])
    return False


def _visible_under(loc: Location, fs_path: str, extensions: frozenset[str]) -> bool:
    """A listed file to take from a prefix: a media extension, and no hidden name below the prefix."""
    below = _key_of(loc, fs_path)[len(loc.key.rstrip("/")) :].strip("/")
    return wanted(below, extensions) and not any(part.startswith(".") for part in below.split("/"))


@contextmanager
def open_input(uri: str) -> Iterator[str | BinaryIO]:
    """What av.open (or OpenCV) can read: the path of a local file, or a seekable pyarrow
    file for a remote object (closed on leaving). Local paths are not checked here."""
    if not is_remote(uri):
        yield local_path(uri)
        return
    with _Remote(uri).open_file() as f:
        yield f


@contextmanager
def open_binary(uri: str) -> Iterator[BinaryIO]:
    """A seekable binary file for reading, local or remote."""
    with open_input(uri) as source:
        if isinstance(source, str):
            with open(source, "rb") as f:
                yield f
        else:
            yield source


def read_bytes(uri: str, limit: int | None = None) -> bytes:
    """A file's bytes (the first `limit` of them if given): OpenCV decodes images from memory."""
    try:
        with open_binary(uri) as f:
            return f.read() if limit is None else f.read(limit)
    except OSError as exc:
        if is_remote(uri):
            raise InputError(uri, _Remote(uri).reason(exc)) from None
        if isinstance(exc, FileNotFoundError):
            raise InputError(uri, "file not found") from None
        if isinstance(exc, IsADirectoryError):
            raise InputError(uri, "is a directory, not a file") from None
        raise InputError(uri, f"cannot read ({exc.strerror or exc})") from None


def exists(uri: str) -> bool:
    """Whether a file or directory (prefix) is there. InputError if its store cannot be asked."""
    if not is_remote(uri):
        return os.path.exists(local_path(uri))
    remote = _Remote(uri)
    try:
        return remote.fs.get_file_info(remote.path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise InputError(uri, remote.reason(exc)) from None


# --- outputs ----------------------------------------------------------------------------


def check_output_dir(uri: str) -> None:
    """Refuse, before any work, a directory outputs cannot go to: a local one that cannot be
    created or written in, a bucket that is missing or unreachable, or a prefix that is an object."""
    if not is_remote(uri):
        _check_local_dir(uri, Path(local_path(uri)))
        return
    remote = _output_remote(uri)
    try:
        if not remote.bucket_exists():
            raise OutputError(f"{uri}: {missing_bucket(remote.loc, remote.endpoint)}")
        if remote.loc.key.strip("/") and remote.info(remote.path.rstrip("/")).type == pafs.FileType.File:
            raise OutputError(f"{uri}: is an object, not a directory (prefix)")
    except OSError as exc:
        raise OutputError(f"{uri}: {remote.reason(exc)}") from None
    except InputError as exc:
        raise OutputError(str(exc)) from None


def _output_remote(uri: str) -> _Remote:
    try:
        return _Remote(uri)
    except InputError as exc:
        raise OutputError(str(exc)) from None


def _check_local_dir(uri: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"{uri}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=TMP_MARK):
            pass
    except OSError as exc:
        raise OutputError(f"{uri}: cannot create or write in this directory ({exc.strerror or exc})") from None


@contextmanager
def output_file(uri: str | os.PathLike, scratch: Path | None = None, local_tmp: Path | None = None) -> Iterator[Path]:
    """Yield a local temporary path to write the output to; publish it when the block ends.

    Local: the temporary file is next to the target (or `local_tmp`, on the target's
    filesystem), synced and renamed over it. Remote:
    it is written in `scratch` (default: the system temporary directory), uploaded to
    the final key (an object appears whole, or not at all) and removed. The temporary
    name keeps the target's extension, since muxers choose their format from it. On an
    exception nothing is published and the temporary file is removed.
    """
    if not is_remote(uri):
        target = Path(local_path(uri))
        with atomic_output(target, local_tmp) as tmp:
            yield tmp
            _fsync(tmp)
        _fsync(target.parent)
        return
    remote = _output_remote(uri)
    fd, name = tempfile.mkstemp(prefix=TMP_MARK, suffix=Path(remote.loc.key).suffix, dir=scratch)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _upload(remote, tmp)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Make a file (or a directory's entries) durable before and after the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync directories; the rename is still atomic
    finally:
        os.close(fd)


def _upload(remote: _Remote, source: Path) -> None:
    content_type = mimetypes.guess_type(remote.loc.key)[0]
    metadata = {"Content-Type": content_type} if content_type and remote.loc.scheme != "hdfs" else None
    try:
        out = remote.fs.open_output_stream(remote.path, metadata=metadata)
    except OSError as exc:
        raise OutputError(f"{remote.uri}: cannot write ({remote.reason(exc)})") from None
    try:
        with open(source, "rb") as f:
            _copy(f, out)
    except BaseException:
        _discard(remote, out)
        raise
    try:
        out.close()
    except OSError as exc:
        raise OutputError(f"{remote.uri}: upload failed ({remote.reason(exc)})") from None


def _copy(source: BinaryIO, out) -> None:
    while block := source.read(COPY_BLOCK):
        out.write(block)


def _discard(remote: _Remote, out) -> None:
    """Undo a partial upload. pyarrow's S3 stream has no abort: closing it completes the
    object with what was written so far, so the object is deleted after closing."""
    for step in (out.close, lambda: remote.fs.delete_file(remote.path)):
        try:
            step()
        except OSError:
            pass
