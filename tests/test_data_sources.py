"""Data sources: local copies (save_to_disk, parquet) with hub schemas, folders, errors."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict, Features, Value
from omegaconf import OmegaConf

from cvt_lab.data import DataSourceError, ImageDataModule, load_splits
from cvt_lab.data.datamodule import SampleDecoder, check_labels
from cvt_lab.data.sources import class_names
from cvt_lab.data.transforms import EvalTransform
from data_helpers import cifar_like, imagenet_like, make_folder, png_bytes, save_parquet


def data_cfg(make_cfg, tmp_path, *overrides) -> dict:
    cfg = make_cfg(*overrides, f"data.cache_dir={tmp_path / 'cache'}")
    return OmegaConf.to_container(cfg.data, resolve=True)


@pytest.mark.parametrize("fmt", ["save_to_disk", "parquet"])
def test_cifar100_local_copy_maps_columns_and_carves_a_fixed_val_split(fmt, make_cfg, tmp_path):
    src = cifar_like()
    path = tmp_path / "cifar"
    src.save_to_disk(str(path)) if fmt == "save_to_disk" else save_parquet(src, path)
    cfg = data_cfg(make_cfg, tmp_path, "data=cifar100", f"data.path={path}", "data.val_size=4")
    splits = load_splits(cfg, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 16, "val": 4, "test": 6}
    assert splits["train"].column_names == ["image", "label"]
    assert splits["train"].features["image"].decode is False
    assert class_names(splits, cfg)[:2] == ["f0", "f1"]
    row = splits["test"][0]
    assert row["label"] == 1000 % 5 and row["image"]["bytes"] == png_bytes(1000 % 256)
    # the carved split depends on data.split_seed only, not on the training seed
    again = load_splits(cfg, seed=2)
    assert list(again["val"]["image"]) == list(splits["val"]["image"])
    other = load_splits({**cfg, "split_seed": 5}, seed=1)
    assert list(other["val"]["image"]) != list(splits["val"]["image"])
    # every image is in exactly one of train / val
    assert len({bytes(r["bytes"]) for r in list(splits["train"]["image"]) + list(splits["val"]["image"])}) == 20


def test_embedded_splits_follow_val_size_and_test_size(make_cfg, tmp_path):
    # the digits were always split 70/10/20: data.val_size / data.test_size were ignored, and
    # the composed config said test_size: null ("test on val") for a separate test split
    def sizes(*overrides):
        splits = load_splits(data_cfg(make_cfg, tmp_path, *overrides))
        return {k: len(v) for k, v in splits.items()}, splits

    default, splits = sizes()
    assert default == {"train": 1257, "val": 180, "test": 360}  # 70/10/20 of 1,797 digits
    assert sizes("data.val_size=0.2")[0] == {"train": 1077, "val": 360, "test": 360}
    assert sizes("data.val_size=100", "data.test_size=200")[0] == {"train": 1497, "val": 100, "test": 200}
    no_test, again = sizes("data.test_size=null")
    assert no_test == {"train": 1617, "val": 180, "test": 180}
    assert list(again["test"]["image"]) == list(again["val"]["image"])  # null: test on val


def test_cifar100_coarse_labels_are_selectable(make_cfg, tmp_path):
    cifar_like().save_to_disk(str(tmp_path / "cifar"))
    cfg = data_cfg(make_cfg, tmp_path, "data=cifar100", f"data.path={tmp_path / 'cifar'}",
                   "data.label_column=coarse_label", "data.num_classes=20", "data.val_size=4")
    splits = load_splits(cfg)
    assert set(list(splits["test"]["label"])) == {10, 11, 12}
    assert class_names(splits, cfg) == [f"c{i}" for i in range(20)]


def test_a_carve_larger_than_train_names_the_key(make_cfg, tmp_path):
    # cifar100's val_size=5000 on a 20-image copy failed with datasets' "test_size=5000 should be ..."
    cifar_like().save_to_disk(str(tmp_path / "cifar"))
    cfg = data_cfg(make_cfg, tmp_path, "data=cifar100", f"data.path={tmp_path / 'cifar'}")
    with pytest.raises(DataSourceError, match=r"data.val_size=5000 but the train split of cifar100 has "
                                              r"20 images: set data.val_size to fewer images or a fraction"):
        load_splits(cfg)
    DatasetDict(train=cifar_like()["train"]).save_to_disk(str(tmp_path / "train_only"))
    with pytest.raises(DataSourceError, match=r"data.test_size=16 but the train split of cifar100 has 16 "):
        load_splits({**cfg, "path": str(tmp_path / "train_only"), "splits": None, "val_size": 4,
                     "test_size": 16})


def test_class_count_mismatch_names_the_fix(make_cfg, tmp_path):
    cifar_like().save_to_disk(str(tmp_path / "cifar"))
    cfg = data_cfg(make_cfg, tmp_path, "data=cifar100", f"data.path={tmp_path / 'cifar'}",
                   "data.label_column=coarse_label", "data.val_size=4")  # num_classes stays 100
    with pytest.raises(DataSourceError, match="has 20 classes but data.num_classes=100; set data.num_classes=20"):
        ImageDataModule(cfg, {}).setup()


def test_imagenet_schema_uses_validation_for_val_and_test(make_cfg, tmp_path):
    save_parquet(imagenet_like(), tmp_path / "inet")
    cfg = data_cfg(make_cfg, tmp_path, "data=imagenet", f"data.path={tmp_path / 'inet'}")
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 4, "test": 4}
    assert list(splits["val"]["label"]) == [700, 707, 714, 721]
    dm = ImageDataModule(cfg, {})
    dm.setup()
    assert len(dm.class_names) == 1000 and dm.class_names[7] == "n00000007"


def test_missing_column_names_the_keys_to_set(make_cfg, tmp_path):
    cifar_like().save_to_disk(str(tmp_path / "cifar"))
    cfg = data_cfg(make_cfg, tmp_path, "data=imagenet", f"data.path={tmp_path / 'cifar'}",
                   "data.splits.val=test", "data.splits.test=test")  # splits it has: columns are wrong
    with pytest.raises(DataSourceError, match=r"no column\(s\) \['image', 'label'\].*data.image_column"):
        load_splits(cfg)


def test_offline_hub_error_names_dataset_reason_and_fixes(make_cfg, tmp_path):
    cfg = data_cfg(make_cfg, tmp_path, "data=cifar100")
    with pytest.raises(DataSourceError) as info:
        load_splits(cfg)
    msg = str(info.value)
    assert "cannot load dataset 'uoft-cs/cifar100' from the Hugging Face hub: this machine is offline" in msg
    assert "hf auth login" in msg and "HF_TOKEN" in msg and "accepting its terms" in msg
    assert "data.path" in msg and "save_to_disk" in msg


def test_string_labels_name_the_fix(make_cfg, tmp_path):
    # a parquet file with class names as labels crashed in check_labels (numpy UFuncTypeError)
    Dataset.from_dict({"image": [{"bytes": png_bytes(i), "path": None} for i in range(4)],
                      "species": ["cat", "dog"] * 2}).to_parquet(str(tmp_path / "pets.parquet"))
    cfg = data_cfg(make_cfg, tmp_path, "data=folder", f"data.path={tmp_path / 'pets.parquet'}",
                   "data.label_column=species", "data.num_classes=2")
    with pytest.raises(DataSourceError, match=r"folder: label column 'species' holds strings, not class "
                                              r"indices; encode every split .*ds.cast_column\('species', "
                                              r"datasets.ClassLabel\(names="):
        ImageDataModule(cfg, {}).setup()


def test_bad_local_path_is_named(make_cfg, tmp_path):
    cfg = data_cfg(make_cfg, tmp_path, "data=cifar100", f"data.path={tmp_path / 'nope'}")
    with pytest.raises(DataSourceError, match="data.path=.*nope: no such file or folder"):
        load_splits(cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no .parquet files"):
        load_splits({**cfg, "path": str(tmp_path / "empty")})


# valid/ (Roboflow's and many Kaggle exports' name) was ignored silently and val carved from train
@pytest.mark.parametrize("val_folder", ["validation", "valid"])
def test_folder_with_train_val_test_subfolders(make_cfg, tmp_path, val_folder):
    root = make_folder(tmp_path / "pets", {"train": 4, val_folder: 2, "test": 1})
    cfg = data_cfg(make_cfg, tmp_path, "data=folder", f"data.root={root}")
    dm = ImageDataModule(cfg, {})
    assert dm.num_classes == 3  # counted from the class folders before setup
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 12, "val": 6, "test": 3}
    assert dm.class_names == ["cat", "dog", "eel"]
    assert sorted(list(dm.splits["val"]["label"])) == [0, 0, 1, 1, 2, 2]
    assert dm.splits["test"][2]["image"]["path"].endswith("test/eel/0.png")


def test_folder_without_split_folders_is_carved(make_cfg, tmp_path):
    root = make_folder(tmp_path / "flat", None)  # 3 classes x 6 images
    cfg = data_cfg(make_cfg, tmp_path, "data=folder", f"data.root={root}", "data.val_size=3",
                   "data.test_size=3")
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 3, "test": 3}
    assert sorted(list(splits["val"]["label"])) == [0, 1, 2]  # stratified
    paths = [r["path"] for s in splits.values() for r in list(s["image"])]
    assert len(set(paths)) == 18


def test_flat_folder_with_a_class_named_like_a_split(make_cfg, tmp_path):
    # CIFAR-100 has a class 'train': its folder was taken for the train split ("0 class folders")
    root = make_folder(tmp_path / "flat", None, classes=("bus", "train", "val"))
    cfg = data_cfg(make_cfg, tmp_path, "data=folder", f"data.root={root}", "data.val_size=3",
                   "data.test_size=3")
    dm = ImageDataModule(cfg, {})
    assert dm.num_classes == 3
    dm.setup()
    assert dm.class_names == ["bus", "train", "val"]
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 12, "val": 3, "test": 3}
    assert sorted(list(dm.splits["val"]["label"])) == [0, 1, 2]


def test_folder_bad_layouts_get_clear_errors(make_cfg, tmp_path):
    def cfg_for(root):
        return data_cfg(make_cfg, tmp_path, "data=folder", f"data.root={root}")

    with pytest.raises(DataSourceError, match="data=folder needs data.root="):
        load_splits(data_cfg(make_cfg, tmp_path, "data=folder"))
    with pytest.raises(DataSourceError, match="no such folder"):
        load_splits(cfg_for(tmp_path / "missing"))
    single = make_folder(tmp_path / "single", {"train": 2}, classes=("only",))
    with pytest.raises(DataSourceError, match=r"1 class folder\(s\) \['only'\]: a classifier needs at least 2"):
        load_splits(cfg_for(single))
    empty = make_folder(tmp_path / "empty", {"train": 2})
    (empty / "train" / "zebra").mkdir()
    with pytest.raises(DataSourceError, match=r"class folder .*train/zebra has no images"):
        load_splits(cfg_for(empty))
    stray = make_folder(tmp_path / "stray", {"train": 2, "val": 1})
    (stray / "val" / "yak").mkdir()
    (stray / "val" / "yak" / "0.png").write_bytes(png_bytes(3))
    with pytest.raises(DataSourceError, match=r"val/yak is not a class of"):
        load_splits(cfg_for(stray))


def _plant_text_file(root, tmp_path):
    (root / "train" / "dog" / "readme.txt").write_text("not an image")
    (root / "train" / "dog" / ".DS_Store").write_text("ignored silently")


def _plant_broken_link(root, tmp_path):
    # a dangling link (a symlinked image farm whose target moved) failed in the imagefolder
    # builder with a bare FileNotFoundError, with data.skip_corrupt=true too
    (root / "train" / "dog" / "gone.jpg").symlink_to(tmp_path / "moved" / "gone.jpg")


@pytest.mark.parametrize("plant, error", [
    (_plant_text_file, r"train/dog/readme.txt: not an image file \(extension '.txt'\)"),
    (_plant_broken_link, r"train/dog/gone.jpg: a broken symbolic link \(to .*moved/gone.jpg\)")])
def test_folder_bad_item_is_named_or_skipped(make_cfg, tmp_path, caplog, plant, error):
    root = make_folder(tmp_path / "bad", {"train": 3})
    plant(root, tmp_path)
    cfg = data_cfg(make_cfg, tmp_path, "data=folder", f"data.root={root}")
    with pytest.raises(DataSourceError, match=error + r"[\s\S]*data.skip_corrupt=true"):
        load_splits(cfg)
    splits = load_splits({**cfg, "skip_corrupt": True})
    assert sum(len(s) for s in splits.values()) == 9
    assert "skipping 1 item(s)" in caplog.text


def test_labels_out_of_range_name_the_fix(tmp_path):
    ds = cifar_like()["train"].rename_column("fine_label", "label")
    with pytest.raises(DataSourceError, match=r"range over \[0, 4\] but data.num_classes=3; set data.num_classes=5"):
        check_labels(ds, 3, "tiny/train")


def test_negative_labels_say_unlabelled_not_a_class_count():
    # hub test splits mark missing labels with -1: the error said "set data.num_classes=0"
    fix = r"-1 marks an unlabelled row .* map a labelled split there \(data.splits.<split>=<name>, or null"
    with pytest.raises(DataSourceError, match=r"labels of tiny/test include -1: " + fix):
        check_labels(Dataset.from_dict({"label": [-1, -1]}), 100, "tiny/test")
    decoder = SampleDecoder(EvalTransform(8, 1.0), num_classes=100)
    with pytest.raises(DataSourceError, match=r"label -1 of a row is negative: " + fix):
        decoder({"image": {"bytes": png_bytes(1), "path": None}, "label": -1})


def test_labels_that_are_not_class_indices_are_refused_not_truncated():
    # a float label column: 1.5 was truncated to class 1 silently, a missing label (None/NaN,
    # as pandas writes it) failed with a bare 'cannot convert float NaN to integer'
    def labels(values, dtype):
        return Dataset.from_dict({"label": values}, features=Features({"label": Value(dtype)}))

    check_labels(labels([0.0, 1.0, 2.0], "float64"), 3, "tiny/train")  # whole numbers are fine
    fix = r"labels must be class indices 0 \.\. num_classes - 1; fix the label column \(data.label_column\)"
    with pytest.raises(DataSourceError, match=r"labels of tiny/train include 1.5 \(row 1\), not a class index: " + fix):
        check_labels(labels([0, 1.5, 2], "float64"), 3, "tiny/train")
    missing = r"labels of tiny/train are missing in 2 row\(s\) \(the first: row 1\): every image needs its class index; "
    for dtype in ("int64", "float64"):
        with pytest.raises(DataSourceError, match=missing + r"drop the unlabelled rows"):
            check_labels(labels([0, None, 1, None], dtype), 3, "tiny/train")
    decoder = SampleDecoder(EvalTransform(8, 1.0), num_classes=3)  # streams: checked per row
    image = {"bytes": png_bytes(1), "path": "s/0.png"}
    assert decoder({"image": image, "label": 2.0})[1] == 2
    for value, why in ((1.5, "1.5 of s/0.png is not a class index: " + fix), (None, "of s/0.png is missing")):
        with pytest.raises(DataSourceError, match="label " + why):
            decoder({"image": image, "label": value})


def test_a_mapped_split_the_copy_lacks_is_refused_not_carved(make_cfg, tmp_path):
    save_parquet(DatasetDict(train=imagenet_like()["train"]), tmp_path / "inet")  # no validation
    cfg = data_cfg(make_cfg, tmp_path, "data=imagenet", f"data.path={tmp_path / 'inet'}")
    with pytest.raises(DataSourceError, match=r"data.splits.val=validation but the dataset has "
                                              r"the splits \['train'\]"):
        load_splits(cfg)
