"""Adapter paths are confined to the adapter roots: outside paths, '..' and symlinks out refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from loragate.adapters.confinement import AdapterRoots
from loragate.adapters.errors import (
    AdapterNotFoundError,
    AdapterValidationError,
    PathNotAllowedError,
)
from loragate.adapters.validation import ModelShape, validate_adapter
from loragate.server.errors import as_gateway_error
from tests.unit.personas_support import BASE, TINY_MODEL, write_adapter


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return write_adapter(tmp_path / "outside")


def refused(roots: AdapterRoots, path: str | Path) -> str:
    with pytest.raises(PathNotAllowedError) as err:
        roots.confine(path)
    shown = as_gateway_error(err.value)
    assert shown is not None and shown.status == 400 and shown.code == "adapter_path_not_allowed"
    return err.value.message


def test_a_path_inside_a_root_is_resolved(root: Path) -> None:
    inside = write_adapter(root / "a")
    assert AdapterRoots.of([root]).confine(str(inside)) == inside.resolve()


def test_a_path_outside_every_root_is_refused(root: Path, outside: Path) -> None:
    assert "outside the adapter roots" in refused(AdapterRoots.of([root]), outside)


def test_dot_dot_is_refused_even_when_it_lands_inside(root: Path) -> None:
    write_adapter(root / "a")
    message = refused(AdapterRoots.of([root]), f"{root}/a/../a")
    assert "'..'" in message


def test_dot_dot_leading_out_is_refused(root: Path) -> None:
    assert "'..'" in refused(AdapterRoots.of([root]), f"{root}/../outside")


def test_a_symlink_leading_out_is_refused(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside)
    assert "through a symlink" in refused(AdapterRoots.of([root]), root / "link")


def test_a_symlinked_weights_file_leading_out_is_refused(root: Path, outside: Path) -> None:
    inside = write_adapter(root / "a")
    (inside / "adapter_model.safetensors").unlink()
    (inside / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    roots = AdapterRoots.of([root])
    shape = ModelShape.from_config(TINY_MODEL)
    with pytest.raises(PathNotAllowedError) as err:
        validate_adapter(roots.confine(inside), shape, max_rank=8, base_names=[BASE], roots=roots)
    assert "adapter_model.safetensors" in err.value.message


def test_a_symlink_inside_the_roots_is_followed(root: Path) -> None:
    real = write_adapter(root / "real")
    (root / "alias").symlink_to(real)
    assert AdapterRoots.of([root]).confine(root / "alias") == real.resolve()


def test_relative_paths_are_refused(root: Path) -> None:
    assert "must be absolute" in refused(AdapterRoots.of([root]), "root/a")


def test_without_roots_nothing_is_allowed(outside: Path) -> None:
    assert "--adapter-root" in refused(AdapterRoots.of([]), outside)


def test_a_missing_path_inside_a_root(root: Path) -> None:
    with pytest.raises(AdapterNotFoundError) as err:
        AdapterRoots.of([root]).confine(root / "missing")
    assert "does not exist" in err.value.message
    assert not isinstance(err.value, AdapterValidationError | PathNotAllowedError)
