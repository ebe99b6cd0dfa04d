"""The notebooks' plotting helpers draw what the data says: series read from the CSV logger,
attention on the (coarser) key grid without resampling, the eval transform's real steps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cvt_lab import viz  # noqa: E402
from cvt_lab.data.transforms import EvalTransform  # noqa: E402
from cvt_lab.models import create_model  # noqa: E402

# what Lightning's CSVLogger writes: one row per logging call, other columns empty
CSV = """epoch,lr-AdamW,step,train/acc1,train/loss,val/acc1,val/loss
,0.001,0,,,,
0,,9,,2.0,,
0,,19,,,0.5,1.5
0,,19,0.4,,,
1,,29,,1.0,,
1,,39,,,0.75,0.9
"""


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(CSV)
    return tmp_path


def test_read_metrics_csv_keeps_every_logged_value_at_its_step(run_dir):
    series = viz.read_metrics_csv(run_dir)
    assert series["train/loss"] == ([9, 29], [2.0, 1.0])
    assert series["val/acc1"] == ([19, 39], [0.5, 0.75])
    assert series["train/acc1"] == ([19], [0.4])
    assert series["lr-AdamW"] == ([0], [0.001])
    assert "epoch" not in series and "step" not in series
    # a run dir, its csv/ dir and the file itself all lead to the same table
    for source in (run_dir / "csv", run_dir / "csv" / "metrics.csv"):
        assert viz.read_metrics_csv(source) == series


def test_metrics_csv_path_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metrics.csv at .*logger=csv"):
        viz.metrics_csv_path(tmp_path)


def test_learning_curves_draw_the_logged_series_per_panel(run_dir):
    fig = viz.plot_learning_curves(run_dir)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == ["loss", "top-1 accuracy", "learning rate"]
    lines = {line.get_label(): line for line in panels["loss"].lines}
    assert sorted(lines) == ["train/loss", "val/loss"]
    assert list(lines["val/loss"].get_xdata()) == [19, 39]
    assert list(lines["val/loss"].get_ydata()) == [1.5, 0.9]
    only = viz.plot_learning_curves(run_dir, metrics=["val/acc1"])
    assert [ax.get_title() for ax in only.axes] == ["top-1 accuracy"]
    with pytest.raises(ValueError, match="logs none of the plotted metrics"):
        viz.plot_learning_curves(run_dir, metrics=["nothing/here"])


def test_metric_by_run_overlays_runs(run_dir, tmp_path):
    fig = viz.plot_metric_by_run({"a": run_dir, "b": run_dir}, "val/acc1")
    assert [line.get_label() for line in fig.axes[0].lines] == ["a", "b"]
    assert list(fig.axes[0].lines[1].get_ydata()) == [0.5, 0.75]


def test_eval_transform_plan_is_what_it_does():
    transform = EvalTransform(224, 0.875)
    assert transform.plan(640, 427) == ((383, 256), (80, 16, 304, 240))  # short side 256, crop 224
    assert EvalTransform(384, warp=True).plan(640, 427) == ((384, 384), (0, 0, 384, 384))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (427, 640, 3), dtype=np.uint8))
    size, box = transform.plan(*image.size)
    expected = np.asarray(image.resize(size, Image.Resampling.BICUBIC).crop(box))
    assert np.array_equal(transform(image).permute(1, 2, 0).numpy(), expected)


def test_eval_preprocessing_figure_shows_the_plan_and_the_real_output():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (427, 640, 3), dtype=np.uint8))
    transform = EvalTransform(224, 0.875)
    fig = viz.plot_eval_preprocessing(image, transform)
    original, resized, crop = fig.axes
    box = resized.patches[0]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (80, 16, 224, 224)
    assert resized.images[0].get_extent() == [0, 383, 256, 0]
    assert np.array_equal(crop.images[0].get_array(), transform(image).permute(1, 2, 0).numpy())
    assert original.get_title() == "original 640x427"


def test_topk_bars_are_the_sorted_softmax_with_the_true_class_marked():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0, 0.5], [2.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2
    names = ["a", "b", "c", "d", "e", "f"]
    fig = viz.plot_topk(images, logits, names, k=3, labels=[3, None])
    bar_axes = [ax for ax in fig.axes if ax.patches]
    first = bar_axes[0]
    probs = logits[0].softmax(-1)
    assert [t.get_text() for t in first.get_yticklabels()] == ["b", "d", "c"]
    assert np.allclose([p.get_width() for p in first.patches], probs[[1, 3, 2]].numpy())
    green = matplotlib.colors.to_rgba("tab:green")
    assert [p.get_facecolor() == green for p in first.patches] == [False, True, False]
    assert not any(p.get_facecolor() == green for p in bar_axes[1].patches)


def test_query_token_maps_pixels_to_query_cells():
    m = {"q_hw": (4, 4)}
    assert viz.query_token(m, (0, 0), (32, 32)) == 0
    assert viz.query_token(m, (31, 0), (32, 32)) == 3
    assert viz.query_token(m, (8, 8), (32, 32)) == 5  # row 1, column 1
    assert viz.query_token(m, (7.9, 31), (32, 32)) == 12
    with pytest.raises(ValueError, match="outside the 32x32 image"):
        viz.query_token(m, (32, 0), (32, 32))


def synthetic_map(has_cls: bool) -> dict:
    """Two heads, q grid 2x2, kv grid 1x2; every weight tells its (head, query, key)."""
    nq, nk = 4 + has_cls, 2 + has_cls
    attn = torch.zeros(1, 2, nq, nk)
    for h in range(2):
        for q in range(nq):
            for k in range(nk):
                attn[0, h, q, k] = 100 * h + 10 * q + k
    return {"stage": 2, "block": 0, "attn": attn, "q_hw": (2, 2), "kv_hw": (1, 2), "has_cls": has_cls}


def test_attention_grid_picks_the_row_and_keeps_the_kv_grid():
    m = synthetic_map(has_cls=True)
    grid, cls_weight = viz.attention_grid(m, "cls", head=1)
    assert grid.shape == (1, 2) and grid.tolist() == [[101, 102]] and cls_weight == 100
    grid, cls_weight = viz.attention_grid(m, 3, head=0)  # spatial query 3 is row 4 (after cls)
    assert grid.tolist() == [[41, 42]] and cls_weight == 40
    grid, _ = viz.attention_grid(m, 3)  # mean over heads
    assert grid.tolist() == [[91, 92]]
    plain = synthetic_map(has_cls=False)
    grid, cls_weight = viz.attention_grid(plain, 2, head=0)
    assert grid.tolist() == [[20, 21]] and cls_weight == 0.0
    with pytest.raises(ValueError, match="has no cls token"):
        viz.attention_grid(plain, "cls")
    with pytest.raises(ValueError, match="outside the 2x2 query grid"):
        viz.attention_grid(plain, 4)
    with pytest.raises(ValueError, match=r"shape \(5, 3\) does not fit q grid 2x2, kv grid 2x2 and a cls token"):
        viz.attention_grid({**m, "kv_hw": (2, 2)}, 0)


@pytest.fixture(scope="module")
def tiny_maps():
    torch.manual_seed(0)
    model = create_model("cvt_tiny", num_classes=10).eval()
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        _, maps = model.attention_maps(image[None].float() / 255)
    return image, maps


def test_attention_of_a_real_cvt_sums_to_one_on_the_kv_grid(tiny_maps):
    _, maps = tiny_maps
    assert [m["kv_hw"] for m in viz.last_blocks(maps)] == [(8, 8), (4, 4), (2, 2)]
    for m in maps:
        for query in (["cls"] if m["has_cls"] else []) + [0, m["q_hw"][0] * m["q_hw"][1] - 1]:
            grid, cls_weight = viz.attention_grid(m, query)
            assert grid.shape == m["kv_hw"]
            assert grid.sum() + cls_weight == pytest.approx(1.0, abs=1e-5)


def test_attention_is_drawn_on_the_coarse_key_grid_over_the_whole_image(tiny_maps):
    image, maps = tiny_maps
    m = viz.last_blocks(maps)[0]  # stage 0: queries 16x16, keys 8x8
    fig, ax = plt.subplots()
    viz.plot_attention(ax, image, m, viz.query_token(m, (20, 4), (32, 32)))
    overlay = ax.images[1]
    assert overlay.get_array().shape == (8, 8)  # not upsampled: one value per key cell
    assert overlay.get_interpolation() == "nearest" and overlay.get_extent() == [0, 32, 32, 0]
    grid, _ = viz.attention_grid(m, viz.query_token(m, (20, 4), (32, 32)))
    assert np.allclose(overlay.get_array(), grid)
    assert len(ax.lines) == 7 + 7  # the inner lines of the 8x8 key grid
    query = ax.patches[0]  # the 2x2 px query cell holding pixel (20, 4)
    assert (query.get_x(), query.get_y(), query.get_width()) == (20, 4, 2)
    assert "q 16x16 -> kv 8x8" in ax.get_title()


def test_attention_maps_grid_has_a_note_where_there_is_no_cls_token(tiny_maps):
    image, maps = tiny_maps
    fig = viz.plot_attention_maps(image, viz.last_blocks(maps), ["cls", (16, 16)])
    assert len(fig.axes) == 6
    notes = [t.get_text() for ax in fig.axes[:2] for t in ax.texts]
    assert notes == ["stage 0:\nno cls token", "stage 1:\nno cls token"]
    assert "cls token" in fig.axes[2].get_title()
    assert fig.axes[5].images[1].get_array().shape == (2, 2)


def test_plot_images_titles_and_blank_cells():
    images = [np.zeros((4, 4, 3), dtype=np.uint8)] * 3
    fig = viz.plot_images(images, ["x", "y", "z"], cols=2)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["x", "y", "z", ""]
    assert not fig.axes[3].images


def test_attention_colours_start_at_zero(tiny_maps):
    image, maps = tiny_maps
    fig, ax = plt.subplots()
    viz.plot_attention(ax, image, maps[-1], "cls")
    low, high = ax.images[1].get_clim()
    assert low == 0.0 and high == pytest.approx(viz.attention_grid(maps[-1], "cls")[0].max())


def test_images_of_any_pil_mode_are_drawn_in_their_colours():
    # a palette PNG ('P') was drawn as its palette indices through a colour map (false colours),
    # a grey one ('L') through viridis; they are drawn as the RGB the data pipeline decodes
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    palette, grey = rgb.quantize(colors=16), rgb.convert("L")
    fig = viz.plot_images([palette, grey], cols=2)
    for ax, image in zip(fig.axes, (palette, grey)):
        assert np.array_equal(ax.images[0].get_array(), np.asarray(image.convert("RGB")))
    fig, ax = plt.subplots()
    m = {"stage": 0, "block": 0, "attn": torch.full((1, 1, 4, 1), 1.0), "q_hw": (2, 2),
         "kv_hw": (1, 1), "has_cls": False}
    viz.plot_attention(ax, palette, m, 0)
    assert np.array_equal(ax.images[0].get_array(), np.asarray(palette.convert("RGB")))
