"""Where images come from: every source ends as a DatasetDict with train/val/test splits
and columns ``image`` (encoded, ``Image(decode=False)``) and ``label`` (int)."""

from __future__ import annotations

from typing import Any

from datasets import DatasetDict, Image

from .embedded import load_digits_dataset


class DataSourceError(RuntimeError):
    """A dataset that cannot be loaded; the message says which, why, and how to fix it."""


def load_splits(cfg: dict[str, Any], seed: int = 0) -> DatasetDict:
    source = cfg["source"]
    if source == "embedded":
        splits = load_digits_dataset(cfg["image_size"], seed=seed)
    elif source == "hub":
        splits = _load_hub(cfg)
    else:
        raise DataSourceError(f"unknown data.source '{source}'; use embedded | hub")
    return _standardise(splits, cfg, seed)


def _load_hub(cfg: dict[str, Any]) -> DatasetDict:
    import datasets

    hub_id = cfg["hub_id"]
    try:
        return datasets.load_dataset(hub_id)
    except Exception as err:  # the hub raises many types: connection, gated, not found
        raise DataSourceError(
            f"cannot load dataset '{hub_id}' from the Hugging Face hub ({type(err).__name__}: "
            f"{err}). If it is gated, run `huggingface-cli login` and accept its terms on the "
            f"hub; if you are offline, point data.path at a local copy "
            f"(save_to_disk output or parquet files).") from err


def _standardise(splits: DatasetDict, cfg: dict[str, Any], seed: int) -> DatasetDict:
    """Rename columns to image/label, keep images encoded, carve a val split if needed."""
    names = cfg.get("splits") or {}
    out = {}
    for ours in ("train", "val", "test"):
        theirs = names.get(ours, ours)
        if theirs in splits:
            out[ours] = splits[theirs]
    if "val" not in out:
        carved = out["train"].train_test_split(test_size=cfg.get("val_size", 0.1), seed=seed)
        out["train"], out["val"] = carved["train"], carved["test"]
    if "test" not in out:
        out["test"] = out["val"]
    image_col, label_col = cfg.get("image_column", "image"), cfg.get("label_column", "label")
    for split, ds in out.items():
        missing = {image_col, label_col} - set(ds.column_names)
        if missing:
            raise DataSourceError(
                f"split '{split}' has no column(s) {sorted(missing)}; it has {ds.column_names}. "
                f"Set data.image_column / data.label_column to the right names.")
        ds = ds.select_columns([image_col, label_col])
        if image_col != "image":
            ds = ds.rename_column(image_col, "image")
        if label_col != "label":
            ds = ds.rename_column(label_col, "label")
        out[split] = ds.cast_column("image", Image(decode=False))
    return DatasetDict(out)
