"""The config search path: an explicit path, ./configs, $GOVRISK_CONFIG_PATH, the packaged defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.core.config import (
    apply_overrides,
    config_path,
    list_configs,
    packaged_configs,
    read_yaml,
)
from govrisk.core.rating import load_master_scale
from govrisk.data.features import FeatureBuilder
from govrisk.data.store import read_dataset

runner = CliRunner()


def _scale(folder: Path, name: str, scale_name: str) -> Path:
    raw = read_yaml(packaged_configs() / "rating" / "master_scale.yaml") | {"name": scale_name}
    path = folder / "rating" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_lookup_order_cwd_then_env_then_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, env_a, env_b = tmp_path / "project", tmp_path / "a", tmp_path / "b"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("GOVRISK_CONFIG_PATH", f"{env_a}:{env_b}")
    assert load_master_scale().name == "county-master-scale"  # packaged
    _scale(env_b, "master_scale", "from-b")
    assert load_master_scale().name == "from-b"
    _scale(env_a, "master_scale", "from-a")
    assert load_master_scale().name == "from-a"  # earlier folder of the variable wins
    _scale(cwd / "configs", "master_scale", "from-cwd")
    assert load_master_scale().name == "from-cwd"  # ./configs wins over the variable
    explicit = _scale(tmp_path / "elsewhere", "mine", "explicit")
    assert load_master_scale(explicit).name == "explicit"  # a path anywhere on disk

    rows = [e for e in list_configs("rating") if e.name == "master_scale"]
    assert [(e.source, e.shadowed) for e in rows] == [
        ("./configs", False),
        ("GOVRISK_CONFIG_PATH", True),
        ("GOVRISK_CONFIG_PATH", True),
        ("packaged", True),
    ]
    shown = runner.invoke(app, ["config", "show", "rating", "master_scale"])
    assert shown.exit_code == 0
    assert (
        "from-cwd" in shown.output and str(cwd / "configs" / "rating" / "master_scale.yaml") in shown.output
    )
    listed = runner.invoke(app, ["config", "list", "rating"])
    assert listed.exit_code == 0 and "(shadowed)" in listed.output


def test_unknown_names_kinds_and_bad_yaml_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no rating config named 'nosuch'; known: master_scale"):
        config_path("rating", "nosuch")
    with pytest.raises(ValueError, match="unknown config kind 'ratings'"):
        config_path("ratings", "master_scale")
    with pytest.raises(FileNotFoundError, match="rating config file not found"):
        config_path("rating", tmp_path / "missing.yaml")
    bad = tmp_path / "configs" / "rating" / "master_scale.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match=r"master_scale.yaml: not valid YAML at line \d"):
        load_master_scale()
    result = runner.invoke(app, ["config", "show", "rating", "nosuch"])
    assert result.exit_code == 2 and "no rating config named 'nosuch'" in result.output


def test_overrides_set_nested_keys_and_refuse_bad_ones() -> None:
    raw = {"model": {"params": {"trainer": {"max_epochs": 9}}}, "seed": 1}
    apply_overrides(raw, ["model.params.trainer.max_epochs=3", "data.dataset=/x", "seed=2"])
    assert raw == {"model": {"params": {"trainer": {"max_epochs": 3}}}, "seed": 2, "data": {"dataset": "/x"}}
    with pytest.raises(ValueError, match="not of the form key=value"):
        apply_overrides(raw, ["seed"])
    with pytest.raises(ValueError, match="'seed' is not a section"):
        apply_overrides(raw, ["seed.x=1"])


def test_a_dataset_carries_its_contract(
    tiny_county_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features of a dataset are built from the contract in its manifest: a broken contract file that
    shadows the packaged one on the search path is never read."""
    broken = tmp_path / "configs" / "contract" / "county.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text("this is: [not a contract\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not valid YAML"):
        FeatureBuilder.from_config("county")
    ds = read_dataset(tiny_county_path)
    builder = FeatureBuilder.from_config("county", contract=ds.contract)
    fs = builder.fit(ds.applicants, ds.monthly).transform(ds.applicants.iloc[:5], ds.monthly)
    assert len(fs) == 5 and builder.contract == ds.contract
