"""Security defaults: no remote code, safe deserialisation, safetensors exports, no eval/exec,
and output paths that cannot climb out of the run directory."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict, read_write

from infodyn import output_paths, validation
from infodyn.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "infodyn"
SOURCES = sorted(SRC.rglob("*.py"))


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    """`torch.load` / `x.load_from_checkpoint` / `eval` as dotted text."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "?")  # `f().eval` -> `?.eval`
    return ".".join(reversed(parts))


def _kw(call: ast.Call, key: str):
    for kw in call.keywords:
        if kw.arg == key:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_sources_were_found() -> None:
    assert SRC / "pipeline.py" in SOURCES and len(SOURCES) > 10


def test_every_torch_load_is_weights_only() -> None:
    bad, seen = [], 0
    for path in SOURCES:
        for call in _calls(path):
            name = _name(call.func)
            if name == "torch.load" or name.endswith(".load_from_checkpoint"):
                seen += 1
                if not _is_true(_kw(call, "weights_only")):
                    bad.append(_where(path, call))
    assert seen >= 2  # checkpoints.usable_checkpoint and checkpoints.load_module
    assert bad == [], f"torch.load / load_from_checkpoint without weights_only=True: {bad}"


def test_trainer_resume_is_weights_only() -> None:
    bad = [
        _where(path, call)
        for path in SOURCES
        for call in _calls(path)
        if _name(call.func).endswith(".fit")
        and _kw(call, "ckpt_path") is not None
        and not _is_true(_kw(call, "weights_only"))
    ]
    assert bad == []


def test_no_eval_exec_or_unsafe_loaders() -> None:
    banned = {"eval", "exec", "compile", "pickle.load", "pickle.loads", "yaml.load"}
    hits = [
        f"{_where(path, call)} {_name(call.func)}"
        for path in SOURCES
        for call in _calls(path)
        if _name(call.func) in banned
    ]
    assert hits == []


def test_from_pretrained_never_trusts_remote_code_by_default() -> None:
    for path in SOURCES:
        text = path.read_text()
        assert "trust_remote_code=" + "True" not in text, path
        for call in _calls(path):
            if _name(call.func).endswith(".from_pretrained") and _name(call.func).startswith(
                "Auto"
            ):
                value = _kw(call, "trust_remote_code")
                assert value is not None, f"{_where(path, call)} must pass trust_remote_code"


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "model").glob("*.yaml")), ids=str)
def test_model_yaml_does_not_trust_remote_code(path: Path) -> None:
    entry = yaml.safe_load(path.read_text())
    if entry.get("source") in ("hub", "package"):
        assert entry.get("trust_remote_code") is False, (
            f"{path.name}: set trust_remote_code: false"
        )
    else:
        assert entry.get("trust_remote_code", False) is False


def test_model_loaders_pass_trust_remote_code_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omegaconf import OmegaConf

    from infodyn import models

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", spy)
    monkeypatch.setattr(models.AutoModelForSequenceClassification, "from_pretrained", spy)
    entry = OmegaConf.load(REPO / "conf" / "model" / "roberta_base.yaml")
    entry.name_or_path = str(tmp_path)
    for build in (models.build_tokenizer, lambda c: models.build_model(c, num_labels=2)):
        with pytest.raises(models.ModelConfigError):
            build(entry)
    assert seen == [False, False]


def test_export_is_safetensors_only(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from infodyn.models import build_model, char_tokenizer
    from infodyn.pruners.surgery import export_pruned

    entry = OmegaConf.load(REPO / "conf" / "model" / "roberta_tiny.yaml")
    out = export_pruned(build_model(entry, num_labels=2), char_tokenizer(), tmp_path / "model")
    names = {p.name for p in Path(out).iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}


# -- output paths
def test_run_dir_with_dotdot_is_refused(tmp_path: Path) -> None:
    from conftest import compose_config

    cfg = compose_config(["model=roberta_tiny"])
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "runs" / ".." / ".." / "elsewhere")
    with pytest.raises(ConfigError, match=r"run_dir=.*'\.\.'"):
        output_paths.check_output_dir(cfg, Path(cfg.run_dir))
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "runs" / "fine")
    output_paths.check_output_dir(cfg, Path(cfg.run_dir))


@pytest.mark.parametrize(
    ("key", "value"),
    [("model.name", "../../etc"), ("task.name", "a/b"), ("sweep_name", ".."), ("model.name", "")],
)
def test_names_used_as_directories_are_refused(key: str, value: str) -> None:
    from conftest import compose_config

    cfg = compose_config(["model=roberta_tiny", f"{key}='{value}'"])
    with pytest.raises(ConfigError, match=key):
        validation.validate(cfg)


def test_hydra_run_dir_with_dotdot_is_refused() -> None:
    from hydra.core.hydra_config import HydraConfig

    from conftest import compose_config

    cfg = compose_config(["model=roberta_tiny"], return_hydra_config=True)
    with read_write(cfg):
        cfg.hydra.run.dir = "outputs/../../../tmp/escape"
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(ConfigError, match=r"hydra\.run\.dir"):
            output_paths.check_output_dir(cfg, Path("unused"))
        cfg = compose_config(["model=roberta_tiny"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        output_paths.check_output_dir(cfg, Path("unused"))
    finally:
        HydraConfig.instance().cfg = None
