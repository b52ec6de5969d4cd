"""Where model files live, and whether a file is the model its name says.

A model is looked up, in order, in: the models directory given explicitly (`--models-dir`),
`$FACEFLEET_MODELS`, `~/.cache/facefleet/models`, and (for shipped models) the package's
weights directory. `import` and `fetch` write to the first of the three directories.

A file is accepted when its sha256 matches the manifest. For a model whose publisher gives
no SHA-256 (sha256 None in the manifest) the sha256 is pinned when the user imports or
fetches the file: it is recorded in `facefleet-models.lock.json` beside the file, and from
then on the file must match that record. A file with neither is refused. `trust=True` loads
a file the user vouches for and says so (`verified_by="trusted"`).

Nothing here downloads anything unless `fetch` is called; the run path never does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from facefleet.errors import ModelError
from facefleet.models.manifest import MODELS, WEIGHTS_DIR, ModelSpec, get_model, model_for_file

ENV_VAR = "FACEFLEET_MODELS"
LOCK_FILE = "facefleet-models.lock.json"
CHUNK = 1 << 20

Opener = Callable[..., Any]  # urllib.request.urlopen(url, timeout=...) or a stand-in
Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


@dataclass(frozen=True)
class ResolvedModel:
    """A model file found and checked: what it is, where, and what vouches for its bytes."""

    spec: ModelSpec
    path: Path
    sha256: str
    verified_by: str  # "manifest" | "lock" | "trusted"

    @property
    def trusted(self) -> bool:
        return self.verified_by == "trusted"


@dataclass(frozen=True)
class ModelStatus:
    """One row of `facefleet models list`: no hashing, only whether a file is there."""

    spec: ModelSpec
    path: Path | None
    size: int | None


@dataclass(frozen=True)
class VerifyResult:
    name: str
    status: str  # "ok" | "missing" | "bad"
    path: Path | None = None
    verified_by: str | None = None
    message: str = ""


@dataclass(frozen=True)
class ImportResult:
    source: Path
    status: str  # "imported" | "refused" | "unknown"
    name: str | None = None
    path: Path | None = None
    sha256: str | None = None
    message: str = ""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    return digest.hexdigest()


def _is_path(name_or_path: str | Path) -> bool:
    if isinstance(name_or_path, Path):
        return True
    return "/" in name_or_path or os.sep in name_or_path or name_or_path.endswith(".onnx")


def _check_onnx(path: Path) -> str | None:
    """Why a file is not an ONNX model, or None. Used before pinning an unpinned file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base
        return f"not an ONNX model ({type(exc).__name__})"
    if not model.graph.input or not model.graph.node:
        return "not an ONNX model (no graph)"
    return None


class ModelStore:
    """Finds, checks, imports and fetches model files."""

    def __init__(self, models_dir: Path | str | None = None, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        dirs = [Path(models_dir).expanduser()] if models_dir else []
        if env.get(ENV_VAR):
            dirs.append(Path(env[ENV_VAR]).expanduser())
        dirs.append(Path.home() / ".cache" / "facefleet" / "models")  # HOME decides, so tests can move it
        unique: list[Path] = []
        for d in dirs:
            if d not in unique:
                unique.append(d)
        self.search_dirs: tuple[Path, ...] = tuple(unique)
        self.models_dir: Path = unique[0]  # where import and fetch write
        self.shipped_dir: Path = WEIGHTS_DIR

    # ---- lookup -------------------------------------------------------------------

    def candidates(self, spec: ModelSpec) -> list[Path]:
        """Every place a model's file is looked for, in order."""
        places = [d / spec.file for d in self.search_dirs]
        if spec.shipped:
            places.append(self.shipped_dir / spec.file)
        return places

    def find(self, spec: ModelSpec) -> Path | None:
        return next((p for p in self.candidates(spec) if p.is_file()), None)

    def resolve(
        self, name_or_path: str | Path, trust: bool = False, spec: ModelSpec | None = None
    ) -> ResolvedModel:
        """A checked model file, by manifest name or by file path.

        A path is matched to its manifest entry by `spec` or else by its file name. With
        `trust=True` a path is accepted whatever its checksum (verified_by "trusted",
        unless it happens to match the manifest).
        """
        if not _is_path(name_or_path):
            return self.locate(spec or get_model(str(name_or_path)))
        path = Path(name_or_path).expanduser()
        spec = spec or model_for_file(path.name)
        if spec is None:
            raise ModelError(
                f"cannot tell which model {path} is: its file name is none of the manifest's "
                "(see `facefleet models list`); name the model it stands for"
            )
        if not path.is_file():
            raise ModelError(f"model file {path} for {spec.name} does not exist")
        if trust:
            digest = file_sha256(path)
            return ResolvedModel(spec, path, digest, "manifest" if digest == spec.sha256 else "trusted")
        return self._check(spec, path)

    def locate(self, spec: ModelSpec) -> ResolvedModel:
        """Find a model's file and check it, or say where it was looked for and what to do."""
        path = self.find(spec)
        if path is None:
            raise ModelError(self._missing_message(spec))
        return self._check(spec, path)

    def _missing_message(self, spec: ModelSpec) -> str:
        looked = ", ".join(str(p) for p in self.candidates(spec))
        if spec.shipped:
            todo = "reinstall facefleet (it ships this model)"
        elif spec.url:
            todo = (
                f"download it with `facefleet models fetch {spec.name}` or copy in a file you have with "
                f"`facefleet models import PATH` (e.g. FaceFusion's .assets/models/{spec.file})"
            )
        else:
            todo = "copy in a file you have with `facefleet models import PATH`"
        return f"model {spec.name} ({spec.file}) not found; looked in: {looked}; {todo}"

    def _check(self, spec: ModelSpec, path: Path) -> ResolvedModel:
        digest = file_sha256(path)
        if spec.sha256 is not None:
            if digest != spec.sha256:
                raise ModelError(
                    f"model {spec.name} at {path} has sha256 {digest}, expected {spec.sha256}; "
                    "the file is corrupt or a different model: refused (replace it)"
                )
            return ResolvedModel(spec, path, digest, "manifest")
        record = self.read_lock(path.parent).get(spec.name)
        if record is None or record.get("file") != path.name:
            raise ModelError(
                f"model {spec.name} at {path} has no pinned sha256 (its publisher gives none); "
                f"run `facefleet models import {path}` to check it and record its sha256"
            )
        if digest != record.get("sha256"):
            raise ModelError(
                f"model {spec.name} at {path} has sha256 {digest}, but {record.get('sha256')} was recorded "
                f"when it was imported ({path.parent / LOCK_FILE}); the file changed: refused "
                f"(if you replaced it on purpose, run `facefleet models import {path}` again)"
            )
        return ResolvedModel(spec, path, digest, "lock")

    # ---- lock file ----------------------------------------------------------------

    @staticmethod
    def read_lock(directory: Path) -> dict[str, dict[str, Any]]:
        """name -> {file, sha256, size, source, recorded} for the models pinned in a directory."""
        lock = directory / LOCK_FILE
        if not lock.is_file():
            return {}
        try:
            data = json.loads(lock.read_text())
            models = data["models"]
            if not isinstance(models, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelError(f"lock file {lock} is unreadable; delete it and import the models again") from None
        return models

    def _record(self, directory: Path, spec: ModelSpec, path: Path, digest: str, source: str) -> None:
        models = self.read_lock(directory)
        models[spec.name] = {
            "file": path.name,
            "sha256": digest,
            "size": path.stat().st_size,
            "source": source,
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        text = json.dumps({"version": 1, "models": dict(sorted(models.items()))}, indent=2) + "\n"
        _write_atomic(directory / LOCK_FILE, text.encode())

    # ---- commands -----------------------------------------------------------------

    def list_models(self) -> list[ModelStatus]:
        rows = []
        for spec in MODELS.values():
            path = self.find(spec)
            rows.append(ModelStatus(spec, path, path.stat().st_size if path else None))
        return rows

    def verify(self, names: Iterable[str] | None = None) -> list[VerifyResult]:
        """Check every present model (or the named ones) against the manifest or the lock."""
        specs = [get_model(n) for n in names] if names else list(MODELS.values())
        results = []
        for spec in specs:
            path = self.find(spec)
            if path is None:
                results.append(VerifyResult(spec.name, "missing", message=self._missing_message(spec)))
                continue
            try:
                resolved = self._check(spec, path)
            except ModelError as exc:
                results.append(VerifyResult(spec.name, "bad", path, message=str(exc)))
            else:
                results.append(VerifyResult(spec.name, "ok", path, resolved.verified_by))
        return results

    def import_files(self, paths: Iterable[Path | str]) -> list[ImportResult]:
        """Copy model files (or every file in given directories) into the models directory.

        Files are recognized by their manifest file name; others are reported and skipped.
        A pinned model must match the manifest; an unpinned one has its sha256 recorded.
        """
        results = []
        for source in _expand(paths):
            spec = model_for_file(source.name)
            if not source.is_file():
                name = spec.name if spec else None
                results.append(ImportResult(source, "refused", name, message=f"{source} does not exist"))
            elif spec is None:
                results.append(ImportResult(source, "unknown", message="not a model file facefleet knows"))
            else:
                try:
                    results.append(self._import_one(spec, source))
                except ModelError as exc:
                    results.append(ImportResult(source, "refused", spec.name, message=str(exc)))
        return results

    def _import_one(self, spec: ModelSpec, source: Path) -> ImportResult:
        dest = self.models_dir / spec.file
        if dest.exists() and dest.resolve() == source.resolve():  # already in place: check and record
            digest = file_sha256(source)
            self._accept(spec, source, digest)
        else:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            try:
                with open(source, "rb") as f:
                    digest = self._write_checked(spec, f.read, dest, None)
            except OSError as exc:
                raise ModelError(f"cannot import {source}: {exc.strerror or exc}") from None
        if spec.sha256 is None:
            self._record(self.models_dir, spec, dest, digest, str(source.resolve()))
        return ImportResult(source, "imported", spec.name, dest, digest)

    def fetch(
        self,
        name: str,
        url: str | None = None,
        urlopen: Opener | None = None,
        progress: Progress | None = None,
        timeout: float = 60.0,
    ) -> ResolvedModel:
        """Download a model from its published address (or `url`), check it, keep it."""
        spec = get_model(name)
        url = url or spec.url
        if not url:
            raise ModelError(
                f"model {name} has no published download address; "
                "get the file yourself and run `facefleet models import PATH`"
            )
        opener = urlopen or urllib.request.urlopen
        dest = self.models_dir / spec.file
        self.models_dir.mkdir(parents=True, exist_ok=True)
        try:
            with opener(url, timeout=timeout) as response:
                headers = getattr(response, "headers", None)
                length = headers.get("Content-Length") if headers is not None else None
                total = int(length) if length and str(length).isdigit() else None
                digest = self._write_checked(spec, response.read, dest, progress, total)
        except urllib.error.HTTPError as exc:
            raise ModelError(f"cannot download {name} from {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelError(f"cannot download {name} from {url}: {reason}") from None
        if spec.sha256 is None:
            self._record(self.models_dir, spec, dest, digest, url)
        return ResolvedModel(spec, dest, digest, "manifest" if spec.sha256 else "lock")

    # ---- helpers ------------------------------------------------------------------

    def _write_checked(
        self,
        spec: ModelSpec,
        read: Callable[[int], bytes],
        dest: Path,
        progress: Progress | None,
        total: int | None = None,
    ) -> str:
        """Stream bytes to a temporary file beside dest, check them, rename; return sha256."""
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            done = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            self._accept(spec, tmp, digest.hexdigest())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest.hexdigest()

    @staticmethod
    def _accept(spec: ModelSpec, path: Path, digest: str) -> None:
        """Refuse bytes that are not the model: a pinned hash must match; else it must be ONNX."""
        if spec.sha256 is not None:
            if digest != spec.sha256:
                raise ModelError(
                    f"{spec.file} has sha256 {digest}, expected {spec.sha256} for {spec.name}: "
                    "not the published file, refused"
                )
            return
        problem = _check_onnx(path)
        if problem:
            raise ModelError(f"{spec.file} for {spec.name}: {problem}, refused")


def _expand(paths: Iterable[Path | str]) -> Iterator[Path]:
    """Files as given; a directory stands for the files directly in it."""
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            yield from sorted(c for c in path.iterdir() if c.is_file())
        else:
            yield path


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
