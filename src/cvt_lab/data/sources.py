"""Where images come from: every source ends as a (Iterable)DatasetDict with train/val/test
splits and columns ``image`` (encoded, ``Image(decode=False)``) and ``label`` (int).

Sources: ``embedded`` (digits, offline), ``hub`` (``data.hub_id``), ``folder`` (``data.root``);
``data.path`` replaces any of them with a local copy (``save_to_disk`` output, a parquet
file, or a folder of parquet files named by split, as the hub stores them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Image, IterableDatasetDict

from .embedded import load_digits_dataset
from .errors import DataSourceError
from .folder import load_folder

log = logging.getLogger(__name__)

VAL_NAMES = ("val", "validation", "valid")


def load_splits(cfg: dict[str, Any], seed: int = 0) -> DatasetDict | IterableDatasetDict:
    """The configured source as standard splits. ``seed`` only matters without data.split_seed."""
    split_seed = cfg.get("split_seed")
    split_seed = seed if split_seed is None else split_seed
    if cfg.get("path"):
        splits = load_local(cfg["path"], cfg.get("streaming", False), cfg.get("cache_dir"))
    elif cfg["source"] == "embedded":
        splits = load_digits_dataset(cfg["image_size"], cfg.get("val_size", 0.1),
                                     cfg.get("test_size"), seed=split_seed)
    elif cfg["source"] == "hub":
        splits = load_hub(cfg)
    elif cfg["source"] == "folder":
        splits = load_folder(cfg)
    else:
        raise DataSourceError(f"unknown data.source '{cfg['source']}'; use embedded | hub | folder "
                              "(or give data.path=<local copy>)")
    return standardise(splits, cfg, split_seed)


def load_local(path: str, streaming: bool = False, cache_dir: str | None = None
               ) -> DatasetDict | IterableDatasetDict:
    """A local copy: ``save_to_disk`` output, a parquet file or a folder of parquet files."""
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise DataSourceError(f"data.path={path}: no such file or folder (give a save_to_disk "
                              "folder, a .parquet file or a folder of parquet files)")
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(p))
        if isinstance(loaded, Dataset):
            loaded = DatasetDict(train=loaded)
        if streaming:
            return IterableDatasetDict({k: v.to_iterable_dataset(num_shards=min(64, len(v)))
                                        for k, v in loaded.items()})
        return loaded
    if p.is_file() and p.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files={"train": str(p)}, streaming=streaming,
                                     cache_dir=cache_dir)
    if p.is_dir() and any(p.rglob("*.parquet")):
        # split names come from the file names (train-00000-of-00002.parquet, test.parquet, ...)
        return datasets.load_dataset("parquet", data_dir=str(p), streaming=streaming,
                                     cache_dir=cache_dir)
    raise DataSourceError(f"data.path={path}: no save_to_disk output (dataset_dict.json / "
                          "state.json) and no .parquet files found there")


def load_hub(cfg: dict[str, Any]) -> DatasetDict | IterableDatasetDict:
    """``data.hub_id`` from the Hugging Face hub (the user's token is used for gated sets)."""
    import datasets

    hub_id = cfg["hub_id"]
    try:
        return datasets.load_dataset(hub_id, cfg.get("hub_config"), streaming=cfg.get("streaming", False),
                                     cache_dir=cfg.get("cache_dir"))
    except Exception as err:  # noqa: BLE001 - the hub raises many types: connection, gated, not found
        raise DataSourceError(hub_error_message(hub_id, err)) from err


def hub_error_message(hub_id: str, err: BaseException) -> str:
    """Which dataset, why it failed, and the three ways to fix it."""
    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " <- ".join(f"{type(c).__name__}: {c}" for c in chain)
    names = {type(c).__name__ for c in chain}
    offline_env = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                   if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    if "GatedRepoError" in names or "gated" in text.lower() or " 401" in text or " 403" in text:
        why = "it is gated and no accepted token was sent"
    elif offline_env or "Offline" in text or isinstance(err, ConnectionError):
        why = ("this machine is offline" + (f" ({offline_env[0]}=1)" if offline_env else "")
               + " and it is not in the local cache")
    elif "RepositoryNotFoundError" in names or "DatasetNotFoundError" in names:
        why = "no such dataset (check data.hub_id)"
    else:
        why = "the hub request failed"
    return (f"cannot load dataset '{hub_id}' from the Hugging Face hub: {why} [{text}]. Fix it by:\n"
            f"  1. logging in: `hf auth login` (or export HF_TOKEN=...) and accepting its terms at "
            f"https://huggingface.co/datasets/{hub_id} if it is gated;\n"
            f"  2. going online once (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) to download it "
            f"into the cache;\n"
            f"  3. or pointing data.path at a local copy (save_to_disk output or parquet files), "
            f"e.g. data.path=/data/{hub_id.split('/')[-1]}")


def standardise(splits: DatasetDict | IterableDatasetDict, cfg: dict[str, Any], seed: int
                ) -> DatasetDict | IterableDatasetDict:
    """Rename columns to image/label, keep images encoded, carve missing val/test splits."""
    out = _pick_splits(splits, cfg.get("splits") or {})
    streaming = isinstance(splits, IterableDatasetDict)
    if "train" not in out:
        raise DataSourceError(f"{cfg['name']}: no train split among {list(splits)}; map one with "
                              "data.splits.train=<name>")
    image_col, label_col = cfg.get("image_column", "image"), cfg.get("label_column", "label")
    for split, ds in out.items():
        columns = ds.column_names or list(ds.features or {})
        missing = [c for c in (image_col, label_col) if c not in columns]
        if missing:
            raise DataSourceError(
                f"split '{split}' of {cfg['name']} has no column(s) {missing}; it has {columns}. "
                f"Set data.image_column / data.label_column to the right names.")
        if getattr((ds.features or {}).get(label_col), "dtype", None) in ("string", "large_string"):
            raise DataSourceError(
                f"{cfg['name']}: label column '{label_col}' holds strings, not class indices; "
                f"encode every split with the same names once: ds = ds.cast_column('{label_col}', "
                "datasets.ClassLabel(names=[...])), save_to_disk and point data.path there")
        ds = ds.select_columns([image_col, label_col])
        if image_col != "image":
            ds = ds.rename_column(image_col, "image")
        if label_col != "label":
            ds = ds.rename_column(label_col, "label")
        out[split] = ds.cast_column("image", Image(decode=False))
    if streaming:
        if "val" not in out:
            raise DataSourceError(f"{cfg['name']}: streaming needs a validation split (found "
                                  f"{list(splits)}); map it with data.splits.val=<name>")
        out.setdefault("test", out["val"])
        return IterableDatasetDict(out)
    if "val" not in out:
        out["train"], out["val"] = _carve(out["train"], cfg.get("val_size", 0.1), seed, "val", cfg["name"])
    if "test" not in out:
        if cfg.get("test_size"):
            out["train"], out["test"] = _carve(out["train"], cfg["test_size"], seed, "test", cfg["name"])
        else:
            log.info("%s has no test split: testing on the validation split", cfg["name"])
            out["test"] = out["val"]
    return DatasetDict(out)


def _pick_splits(splits: Any, names: dict[str, str]) -> dict[str, Any]:
    """Our split -> the dataset's. A split named in data.splits must exist: carving it from
    train instead would silently report, e.g., ImageNet "test" numbers on training images."""
    out = {}
    for ours in ("train", "val", "test"):
        if names.get(ours) and names[ours] not in splits:
            raise DataSourceError(
                f"data.splits.{ours}={names[ours]} but the dataset has the splits {list(splits)}; "
                f"map it to one of them (data.splits.{ours}=<name>), or set data.splits.{ours}=null "
                "to carve it from train")
        candidates = [names[ours]] if names.get(ours) else ([ours] + list(VAL_NAMES) * (ours == "val"))
        for theirs in candidates:
            if theirs in splits:
                out[ours] = splits[theirs]
                break
    return out


def _carve(ds: Dataset, size: float | int, seed: int, split: str, name: str) -> tuple[Dataset, Dataset]:
    """Split off ``size`` rows (a count, or a fraction < 1), stratified when labels allow."""
    if size >= 1 and size >= len(ds):
        raise DataSourceError(
            f"data.{split}_size={size} but the train split of {name} has {len(ds)} images: set "
            f"data.{split}_size to fewer images or a fraction (e.g. data.{split}_size=0.1)")
    stratify = "label" if isinstance(ds.features["label"], ClassLabel) else None
    try:
        parts = ds.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few images per class to stratify: plain random split
        parts = ds.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def class_names(splits: DatasetDict | IterableDatasetDict, cfg: dict[str, Any]) -> list[str]:
    """data.class_names, else the label column's ClassLabel names, else '0', '1', ..."""
    if cfg.get("class_names"):
        return list(cfg["class_names"])
    feature = (splits["train"].features or {}).get("label")
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(cfg["num_classes"])]
