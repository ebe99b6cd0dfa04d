"""A user's image folder -> DatasetDict via the ``imagefolder`` builder.

Layout: ``root/<split>/<class>/<image>`` with split folders ``train``, ``val``,
``validation`` or ``valid``, ``test`` (missing ones are carved from train later), or
``root/<class>/<image>`` (every split carved). Class names are the train folder's
subfolder names, sorted; label ``i`` is the ``i``-th name. The folder is listed (not
decoded) first, so layout mistakes fail at setup with the path and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from datasets import ClassLabel, DatasetDict, Features, Image

from .decode import SKIP_HINT
from .errors import DataSourceError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga"}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
JUNK = {"thumbs.db", "desktop.ini"}  # OS litter, ignored silently (as are hidden files)


def split_folders(root: Path) -> dict[str, Path]:
    """Our split name -> its folder; the root itself is 'train' when there are none.

    A folder named like a split that holds no class folders, next to other folders, is a
    class of a flat layout (CIFAR-100 has a class 'train'), not a split.
    """
    found = {}
    for ours, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[ours] = root / name
                break
    split_names = {p.name for p in found.values()}
    if (found and any(p.is_dir() and _visible(p) and p.name not in split_names for p in root.iterdir())
            and not any(_subfolders(p) for p in found.values())):
        return {"train": root}
    if found and "train" not in found:
        raise DataSourceError(f"{root} has {sorted(p.name for p in found.values())} but no train/ "
                              "folder: add train/<class>/ folders with the training images")
    return found or {"train": root}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in JUNK


def _subfolders(folder: Path) -> bool:
    return any(p.is_dir() and _visible(p) for p in folder.iterdir())


def folder_classes(root: str | Path) -> list[str]:
    """Class names: the subfolders of the train folder, sorted (cheap: no file listing)."""
    root = _check_root(root)
    train = split_folders(root)["train"]
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and _visible(p))
    if len(classes) < 2:
        loose = [p.name for p in train.iterdir() if p.is_file() and _visible(p)][:3]
        raise DataSourceError(
            f"{train} has {len(classes)} class folder(s) {classes}"
            + (f" and loose files {loose}" if loose else "")
            + ": a classifier needs at least 2 classes. Put each class's images in its own "
              f"subfolder: {train}/<class name>/<image>")
    return classes


def scan_folder(root: str | Path, skip_bad: bool = False) -> tuple[dict[str, list[str]], list[str]]:
    """List image files per split; refuse (or, with skip_bad, skip) what cannot be trained on."""
    root = _check_root(root)
    classes = folder_classes(root)
    files: dict[str, list[str]] = {}
    bad: list[str] = []
    for split, folder in split_folders(root).items():
        files[split] = []
        for class_dir in sorted(p for p in folder.iterdir() if _visible(p)):
            if class_dir.is_file():
                bad.append(f"{class_dir}: a file outside the class folders")
                continue
            if class_dir.name not in classes:
                raise DataSourceError(
                    f"{class_dir} is not a class of {split_folders(root)['train']} (classes come "
                    f"from the train folder: {classes[:10]}...): rename it or add it to train/")
            images = []
            for item in sorted(p for p in class_dir.iterdir() if _visible(p)):
                if item.is_symlink() and not item.exists():
                    bad.append(f"{item}: a broken symbolic link (to {os.readlink(item)})")
                elif item.is_dir():
                    bad.append(f"{item}: a folder inside a class folder (images must sit directly "
                               "in <split>/<class>/)")
                elif item.suffix.lower() not in IMAGE_EXTENSIONS:
                    bad.append(f"{item}: not an image file (extension '{item.suffix}')")
                else:
                    images.append(str(item))
            if not images and split == "train":
                raise DataSourceError(
                    f"class folder {class_dir} has no images: add images or remove the folder "
                    "(a class without training images cannot be learned)")
            files[split] += images
    if bad:
        listing = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        if not skip_bad:
            raise DataSourceError(
                f"{len(bad)} item(s) in {root} are not images in class folders:\n  {listing}\n"
                f"Move them out of the dataset folder, or {SKIP_HINT}")
        log.warning("skipping %d item(s) in %s that are not images in class folders:\n  %s",
                    len(bad), root, listing)
    return files, classes


def load_folder(cfg: dict[str, Any]) -> DatasetDict:
    """``data.root`` -> DatasetDict of {image (path, not decoded), label} via ``imagefolder``."""
    import datasets

    files, classes = scan_folder(cfg.get("root"), cfg.get("skip_corrupt", False))
    files = {split: paths for split, paths in files.items() if paths}
    features = Features({"image": Image(decode=False), "label": ClassLabel(names=classes)})
    return datasets.load_dataset("imagefolder", data_files=files, features=features,
                                 cache_dir=cfg.get("cache_dir"))


def _check_root(root: str | Path | None) -> Path:
    if not root:
        raise DataSourceError("data=folder needs data.root=<folder with train/<class>/ images>")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataSourceError(f"data.root={root}: no such folder (give the folder that holds "
                              "train/, val/, test/ or one subfolder per class)")
    return path
