"""Every bad input a user can hand bcd.train gets a clear error before training (or is converted)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from PIL import Image

from bcd.data.sources import DatasetError
from bcd.utils.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.configs import compose_config, compose_train, tiny_overrides


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


def bad_links(folder: Path) -> dict[Path, str]:
    """Write a broken symbolic link and two links that point at each other into the Early class folder; returns
    each link with the reason it should be reported with."""
    early = folder / "Early"
    os.symlink("nowhere.jpg", early / "broken.jpg")
    os.symlink("loop_b.jpg", early / "loop_a.jpg")
    os.symlink("loop_a.jpg", early / "loop_b.jpg")
    loop = "symbolic link loop"
    return {early / "broken.jpg": "broken symbolic link -> nowhere.jpg", early / "loop_a.jpg": loop, early / "loop_b.jpg": loop}


def test_broken_and_looping_links_fail_with_their_reasons(train_run, image_folder: Path) -> None:
    links = bad_links(image_folder)
    with pytest.raises(DatasetError) as error:
        train_run(*folder_overrides(image_folder))
    message = str(error.value)
    for path, reason in links.items():
        assert f"{path}: {reason}" in message
    assert "dataset.on_bad_file=skip" in message


def test_unreadable_files_skipped_on_request(train_run, image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = [*bad_files(image_folder).values(), *bad_links(image_folder)]
    before = sorted(p.name for p in (image_folder / "Pro").iterdir())
    with caplog.at_level(logging.WARNING, logger="bcd.data.datamodule"):
        summary = train_run(*folder_overrides(image_folder), "dataset.on_bad_file=skip")
    skipped = Path(summary.run_dir) / "skipped_files.txt"
    assert all(str(path) in skipped.read_text() for path in files)
    assert "broken.jpg: broken symbolic link -> nowhere.jpg" in skipped.read_text()
    assert set(summary.dataset.skipped_files) == {str(p) for p in files}
    manifest = (Path(summary.run_dir) / "split_manifest.csv").read_text()
    assert "zero.jpg" not in manifest and "corrupt.jpg" not in manifest and "broken.jpg" not in manifest
    assert f"dataset.on_bad_file=skip: left out 7 unreadable file(s); they are listed in {skipped}" in caplog.text
    # nothing was written inside the dataset folder
    assert sorted(p.name for p in (image_folder / "Pro").iterdir()) == before


def test_audit_lists_broken_links(image_folder: Path, tmp_path: Path) -> None:
    from bcd.audit import run_audit

    bad_links(image_folder)
    cfg = compose_config("audit", ["dataset=folder", f"dataset.root={image_folder}", f"paths.output_dir={tmp_path / 'audit'}"])
    assert run_audit(cfg)["bad_files"] == {
        "Early/broken.jpg": "broken symbolic link -> nowhere.jpg",
        "Early/loop_a.jpg": "symbolic link loop",
        "Early/loop_b.jpg": "symbolic link loop",
    }


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
    assert summary.dataset.skipped_files == {}


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


def manifest_overrides(image_folder: Path, manifest: Path) -> list[str]:
    return ["dataset=manifest", f"dataset.root={image_folder}", f"dataset.manifest={manifest}"]


def relabel(rows: list[str], indices: range | list[int], label: str) -> list[str]:
    """The rows with the label of rows[i] replaced for every i in indices."""
    return [row.rsplit(",", 1)[0] + f",{label}" if i in indices else row for i, row in enumerate(rows)]


def test_manifest_labels_differing_only_in_case(train_run, image_folder: Path, tmp_path: Path) -> None:
    rows = relabel(manifest_rows(image_folder), [1, 4], "benign")  # rows 0-11 are Benign, on lines 2-13
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError) as error:
        train_run(*manifest_overrides(image_folder, manifest))
    assert (
        f"dataset.manifest: {manifest} has labels that differ only in case, which would become separate classes:\n"
        "  'Benign' (lines 2, 4, 5, 7, 8, 9, 10, 11, 12, 13) and 'benign' (lines 3, 6)\n"
        "use one spelling for every row of a class"
    ) in str(error.value)


def test_manifest_label_typo_suggests_the_common_label(train_run, image_folder: Path, tmp_path: Path) -> None:
    rows = relabel(manifest_rows(image_folder), [5], "Benjgn")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError) as error:
        train_run(*manifest_overrides(image_folder, manifest))
    assert (
        "label 'Benjgn' (line 7) has 1 row(s) against 11 of 'Benign': did you mean 'Benign'?\n"
        "fix the labels, or set dataset.classes=[Benign,Benjgn,Early,Pre,Pro] if they are real classes"
    ) in str(error.value)


def test_rare_manifest_labels_that_are_real_classes(train_run, image_folder: Path, tmp_path: Path) -> None:
    # 'Myeloid' is as rare as 'Benjgn' but close to no other label; 'Benjgn' is kept once dataset.classes lists it
    rows = relabel(relabel(manifest_rows(image_folder), [5], "Myeloid"), [6], "Benjgn")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError, match="has labels that look like typos") as error:
        train_run(*manifest_overrides(image_folder, manifest))
    assert "'Benjgn'" in str(error.value) and "'Myeloid'" not in str(error.value)
    summary = train_run(*manifest_overrides(image_folder, manifest), "dataset.classes=[Benign,Benjgn,Early,Myeloid,Pre,Pro]")
    assert summary.dataset.class_names == ["Benign", "Benjgn", "Early", "Myeloid", "Pre", "Pro"]


def test_manifest_with_a_path_listed_twice(train_run, image_folder: Path, tmp_path: Path) -> None:
    rows = manifest_rows(image_folder)
    image = rows[20].split(",")[0]
    manifest = write_manifest(tmp_path / "m.csv", [*rows, f"{image},Pro", f"./{image},Benign"])
    with pytest.raises(DatasetError) as error:
        train_run(*manifest_overrides(image_folder, manifest))
    assert (
        f"dataset.manifest: {manifest} lists 1 image(s) in more than one row:\n"
        f"  {image} (lines 22, 50, 51, labels ['Benign', 'Early', 'Pro'])\n"
        "keep one row per image, with its correct label"
    ) in str(error.value)


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_single_class_folder(train_run, image_folder: Path, tmp_path: Path, task: str) -> None:
    root = tmp_path / "one-class"
    root.mkdir()
    shutil.move(image_folder / "Benign", root / "Benign")
    with pytest.raises(DatasetError) as error:
        train_run(*folder_overrides(root), f"task={task}", "dataset.negative_classes=[Benign]")
    assert str(error.value).startswith(
        f"dataset: found only one class ('Benign') in {root}; a classifier needs at least two classes"
    )


def test_single_label_manifest(train_run, image_folder: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", [row for row in manifest_rows(image_folder) if row.endswith(",Pro")])
    with pytest.raises(DatasetError, match=rf"found only one class \('Pro'\) in {manifest}; a classifier needs"):
        train_run(*manifest_overrides(image_folder, manifest))


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


@pytest.mark.parametrize(("overrides", "key"), [
    (["trainer.max_epochs=0"], "trainer.max_epochs: 0"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs: -2"),
    (["trainer.max_epochs=null", "+trainer.max_steps=0"], "trainer.max_steps: 0"),
])
def test_training_that_would_train_nothing(train_run, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} trains nothing, so the test would score untrained weights; it must "
                                          r"be >= 1 \("):
        train_run(*overrides)


@pytest.mark.parametrize("max_epochs", ["null", "-1"])
def test_training_length_set_by_max_steps(train_run, max_epochs: str) -> None:
    summary = train_run(f"trainer.max_epochs={max_epochs}", "+trainer.max_steps=4")  # one epoch of 4 batches
    assert summary.metrics.test


def test_existing_summary_is_never_overwritten(train_run, tmp_path: Path) -> None:
    summary = train_run()
    run_dir = Path(summary.run_dir)
    before = json.loads((run_dir / "summary.json").read_text())
    from bcd.train import train

    cfg = compose_train([*tiny_overrides(Path(summary.dataset.root).parent), f"paths.output_dir={run_dir}"])
    with pytest.raises(FileExistsError):
        train(cfg)
    assert json.loads((run_dir / "summary.json").read_text()) == before
