"""Every bad input a user can hand bcd.train gets a clear error before training (or is converted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from PIL import Image

from bcd.data.sources import DatasetError
from bcd.utils.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.configs import compose_train, tiny_overrides


def folder_overrides(root: Path) -> list[str]:
    return ["dataset=folder", f"dataset.root={root}"]


def first_image(folder: Path, class_name: str = "Pro") -> Path:
    return sorted((folder / class_name).glob("*.jpg"))[0]


def test_missing_dataset_root(train_run) -> None:
    with pytest.raises(ConfigError, match="dataset.root is not set"):
        train_run("dataset=folder")


def test_dataset_root_that_does_not_exist(train_run, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset.root: .*nowhere does not exist"):
        train_run(*folder_overrides(tmp_path / "nowhere"))


def test_empty_class_folder(train_run, image_folder: Path) -> None:
    (image_folder / "Empty").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*Empty holds no images"):
        train_run(*folder_overrides(image_folder))


def test_missing_class_folder_for_a_configured_class(train_run, image_folder: Path) -> None:
    shutil.rmtree(image_folder / "Benign")
    with pytest.raises(DatasetError, match=r"no folder for class\(es\) \['Benign'\].*Original/"):
        train_run("dataset=taleqani_all", f"dataset.root={image_folder}")


def bad_files(folder: Path) -> dict[str, Path]:
    """Write one of each kind of unreadable file into the Pro class folder."""
    good = first_image(folder).read_bytes()
    files = {
        "empty": folder / "Pro" / "zero.jpg",
        "not an image": folder / "Pro" / "notes.jpg",
        "truncated": folder / "Pro" / "truncated.jpg",
        "corrupt": folder / "Pro" / "corrupt.jpg",
    }
    files["empty"].write_bytes(b"")
    files["not an image"].write_text("this is a text file, not a JPEG\n")
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["corrupt"].write_bytes(good[:20] + bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
    return files


def test_unreadable_files_fail_with_their_paths(train_run, image_folder: Path) -> None:
    files = bad_files(image_folder)
    with pytest.raises(DatasetError) as error:
        train_run(*folder_overrides(image_folder))
    message = str(error.value)
    for path in files.values():
        assert str(path) in message
    assert "empty file" in message and "not an image" in message and "truncated" in message
    assert "dataset.on_bad_file=skip" in message


def test_unreadable_files_skipped_on_request(train_run, image_folder: Path) -> None:
    files = bad_files(image_folder)
    before = sorted(p.name for p in (image_folder / "Pro").iterdir())
    summary = train_run(*folder_overrides(image_folder), "dataset.on_bad_file=skip")
    skipped = Path(summary.run_dir) / "skipped_files.txt"
    assert all(str(path) in skipped.read_text() for path in files.values())
    assert set(summary.dataset["skipped_files"]) == {str(p) for p in files.values()}
    manifest = (Path(summary.run_dir) / "split_manifest.csv").read_text()
    assert "zero.jpg" not in manifest and "corrupt.jpg" not in manifest
    # nothing was written inside the dataset folder
    assert sorted(p.name for p in (image_folder / "Pro").iterdir()) == before


def test_odd_image_modes_are_converted(train_run, image_folder: Path) -> None:
    source = np.asarray(Image.open(first_image(image_folder, "Early")).convert("RGB"))
    Image.fromarray(source).convert("L").save(image_folder / "Early" / "gray.png")
    rgba = np.dstack([source, np.full(source.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(image_folder / "Early" / "rgba.png")
    sixteen = (source[..., 0].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(image_folder / "Early" / "sixteen.png")
    Image.fromarray(source).convert("P").save(image_folder / "Early" / "palette.png")
    summary = train_run(*folder_overrides(image_folder))
    manifest = (Path(summary.run_dir) / "split_manifest.csv").read_text()
    for name in ("gray.png", "rgba.png", "sixteen.png", "palette.png"):
        assert name in manifest
    assert summary.dataset["skipped_files"] == {}


def write_manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


def manifest_rows(folder: Path) -> list[str]:
    return [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(folder.glob("*/*.jpg"))]


def test_manifest_with_unknown_class(train_run, image_folder: Path, tmp_path: Path) -> None:
    rows = manifest_rows(image_folder)
    rows[3] = rows[3].rsplit(",", 1)[0] + ",Myeloid"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    overrides = ["dataset=manifest", f"dataset.root={image_folder}", f"dataset.manifest={manifest}"]
    with pytest.raises(DatasetError, match=r"line 5: unknown class 'Myeloid'"):
        train_run(*overrides, "dataset.classes=[Benign,Early,Pre,Pro]")


def test_manifest_path_outside_root_or_missing(train_run, image_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    shutil.copy(first_image(image_folder), outside)
    rows = [*manifest_rows(image_folder), "../outside.jpg,Pro", "Pro/missing.jpg,Pro"]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError) as error:
        train_run("dataset=manifest", f"dataset.root={image_folder}", f"dataset.manifest={manifest}")
    assert "outside dataset.root" in str(error.value)
    assert "missing.jpg does not exist" in str(error.value)


def test_manifest_trains(train_run, image_folder: Path, tmp_path: Path) -> None:
    rows = [f"{row},patient{i // 3}" for i, row in enumerate(manifest_rows(image_folder))]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,group\n" + "\n".join(rows) + "\n")
    summary = train_run("dataset=manifest", f"dataset.root={image_folder}", f"dataset.manifest={manifest}")
    assert summary.metrics.test


def test_config_typo_fails_with_hydra_error(synthetic_cache: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_train([*tiny_overrides(synthetic_cache), "optimizer.lrr=1"])


@pytest.mark.slow
def test_config_typo_from_the_command_line(tmp_path: Path) -> None:
    result = run_cli(["bcd.train", "optimizer.lrr=1"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Key 'lrr' not in 'AdamWConfig'" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_gpu_accelerator_without_a_gpu(train_run) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu .* no usable CUDA GPU"):
        train_run("trainer.accelerator=gpu")


def test_existing_summary_is_never_overwritten(train_run, tmp_path: Path) -> None:
    summary = train_run()
    run_dir = Path(summary.run_dir)
    before = json.loads((run_dir / "summary.json").read_text())
    from bcd.train import train

    cfg = compose_train([*tiny_overrides(Path(summary.dataset["root"]).parent), f"paths.output_dir={run_dir}"])
    with pytest.raises(FileExistsError):
        train(cfg)
    assert json.loads((run_dir / "summary.json").read_text()) == before
