"""Plots for the notebooks: learning curves, eval preprocessing, top-k predictions and
attention maps. matplotlib only; each ``plot_*`` returns its Figure (nothing is shown or
saved), so notebooks display it and scripts ``savefig`` it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from .data.transforms import EvalTransform

# learning-curve panels: title -> test on a metric name
PANELS = {
    "loss": lambda k: k.endswith("loss"),
    "top-1 accuracy": lambda k: k.endswith("acc1") or k.endswith("acc1_best"),
    "learning rate": lambda k: k.startswith("lr-"),
}


def _figure(*args: Any, **kwargs: Any):
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _hwc(image: Any) -> np.ndarray:
    """A PIL image, (H, W, C) array or (C, H, W) tensor (a model input) -> (H, W, C) array.
    A PIL image of any mode comes as the RGB the data pipeline decodes it to (a palette or
    grey image's own array would be drawn through a colour map)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return (image.permute(1, 2, 0) if image.ndim == 3 else image).numpy()
    if isinstance(image, Image.Image):
        from .data.decode import to_rgb

        image = to_rgb(image)
    return np.asarray(image)


# --------------------------------------------------------------------------- learning curves

def metrics_csv_path(source: str | Path) -> Path:
    """The CSV logger's ``metrics.csv`` for a run dir, its ``csv/`` dir or the file itself."""
    path = Path(source)
    for candidate in (path, path / "metrics.csv", path / "csv" / "metrics.csv"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no metrics.csv at {path} (nor {path}/csv/metrics.csv): give a run "
                            "dir of a run with the CSV logger (logger=default or logger=csv)")


def read_metrics_csv(source: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every logged metric as (steps, values), in logging order. Lightning writes one row per
    logging call with the other columns empty; empty cells are skipped."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    with metrics_csv_path(source).open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def plot_learning_curves(source: str | Path, metrics: Sequence[str] | None = None):
    """Loss, top-1 accuracy and learning rate against the optimizer step, one panel each
    (panels with nothing logged are left out). ``metrics`` limits which series are drawn."""
    series = read_metrics_csv(source)
    if metrics is not None:
        series = {k: v for k, v in series.items() if k in metrics}
    panels = {title: sorted(k for k in series if test(k)) for title, test in PANELS.items()}
    panels = {title: keys for title, keys in panels.items() if keys}
    if not panels:
        raise ValueError(f"{metrics_csv_path(source)} logs none of the plotted metrics "
                         f"(it has {sorted(series)})")
    fig, axes = _figure(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items()):
        _draw_series(ax, title, {key: series[key] for key in keys})
    fig.tight_layout()
    return fig


def plot_metric_by_run(runs: dict[str, str | Path], metric: str = "val/acc1"):
    """One metric of several runs (label -> run dir) on one axis, e.g. a sweep's variants."""
    fig, ax = _figure(figsize=(5.5, 3.6))
    _draw_series(ax, metric, {label: read_metrics_csv(run_dir).get(metric, ([], []))
                              for label, run_dir in runs.items()})
    fig.tight_layout()
    return fig


def _draw_series(ax: Any, title: str, series: dict[str, tuple[list[int], list[float]]]) -> None:
    for label, (steps, values) in series.items():
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=label)
    ax.set(title=title, xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_images(images: Sequence[Any], titles: Sequence[str] | None = None, cols: int = 8):
    """A grid of images (PIL, arrays or (C, H, W) tensors) with optional titles."""
    rows = math.ceil(len(images) / cols)
    fig, axes = _figure(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(_hwc(images[i]))
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize="small")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- preprocessing

def plot_eval_preprocessing(image: Any, transform: "EvalTransform"):
    """The eval transform's steps on one PIL image: the original, the resized image with the
    crop box, and the crop the model sees (the transform's real output)."""
    import matplotlib.patches as patches

    width, height = image.size
    (rw, rh), (left, top, right, bottom) = transform.plan(width, height)
    out = transform(image)
    fig, axes = _figure(1, 3, figsize=(12, 3.8))
    axes[0].imshow(_hwc(image))
    axes[0].set_title(f"original {width}x{height}")
    # the same pixels stretched to the resized geometry: shows the step, resamples nothing
    axes[1].imshow(_hwc(image), extent=(0, rw, rh, 0))
    axes[1].add_patch(patches.Rectangle((left, top), right - left, bottom - top, fill=False,
                                        edgecolor="red", linewidth=2))
    how = "warp" if transform.warp else f"short side -> {min(rw, rh)} (crop_pct {transform.crop_pct})"
    axes[1].set_title(f"resize to {rw}x{rh}: {how}", fontsize="medium")
    axes[2].imshow(_hwc(out))
    axes[2].set_title(f"centre crop {out.shape[2]}x{out.shape[1]} = model input", fontsize="medium")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- predictions

def plot_topk(images: Sequence[Any], logits: torch.Tensor, class_names: Sequence[str],
              k: int = 5, labels: Sequence[int | None] | None = None):
    """Each image beside its top-k classes and softmax probabilities (true class in green;
    ``labels`` may hold None for images of no known class)."""
    probs = logits.detach().float().softmax(dim=-1).cpu()
    k = min(k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=-1)
    n = len(images)
    cols = 2 if n > 3 else 1
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, 2 * cols, figsize=(6.5 * cols, 1.9 * rows), squeeze=False,
                        gridspec_kw={"width_ratios": [1, 2] * cols})
    for ax in axes.flat:
        ax.axis("off")
    for i, image in enumerate(images):
        ax_img, ax_bar = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.imshow(_hwc(image))
        names = [str(class_names[j]) for j in top_i[i].tolist()]
        truth = None if labels is None or labels[i] is None else str(class_names[labels[i]])
        ax_img.set_title(f"true: {truth}" if truth is not None else f"image {i}", fontsize="small")
        ax_bar.axis("on")
        colours = ["tab:green" if name == truth else "tab:blue" for name in names]
        ax_bar.barh(range(k), top_p[i].tolist(), color=colours)
        ax_bar.set_yticks(range(k), [name[:28] for name in names], fontsize="small")
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize="x-small")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- attention

def query_token(attn_map: dict[str, Any], xy: tuple[float, float], image_hw: tuple[int, int]) -> int:
    """The query token (row-major index on this block's query grid) whose cell holds pixel
    ``xy = (x, y)`` of an image of ``image_hw = (height, width)``."""
    (qh, qw), (h, w) = attn_map["q_hw"], image_hw
    x, y = xy
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"pixel {xy} is outside the {w}x{h} image")
    return int(y * qh // h) * qw + int(x * qw // w)


def attention_grid(attn_map: dict[str, Any], query: int | str, sample: int = 0,
                   head: int | None = None) -> tuple[np.ndarray, float]:
    """One query's attention over the key/value grid of one block.

    Args:
        attn_map: one entry of ``CvT.attention_maps`` (``attn`` (B, heads, N_q, N_kv),
            ``q_hw``, ``kv_hw``, ``has_cls``).
        query: ``"cls"`` or a spatial query token (row-major on ``q_hw``; see :func:`query_token`).
        head: one head, or None for the mean over heads.

    Returns:
        the weights on the spatial keys, shape ``kv_hw`` (coarser than ``q_hw`` when the k/v
        projection is strided), and the weight on the cls key (0.0 without a cls token).
    """
    attn = attn_map["attn"][sample].detach().float().cpu()  # (heads, N_q, N_kv)
    weights = attn.mean(0) if head is None else attn[head]
    has_cls = bool(attn_map["has_cls"])
    (kh, kw), (qh, qw) = attn_map["kv_hw"], attn_map["q_hw"]
    offset = int(has_cls)  # the cls token comes first, in queries and keys alike
    if weights.shape != (offset + qh * qw, offset + kh * kw):
        raise ValueError(f"attention of shape {tuple(weights.shape)} does not fit q grid {qh}x{qw}, "
                         f"kv grid {kh}x{kw}{' and a cls token' if has_cls else ''}")
    if query == "cls":
        if not has_cls:
            raise ValueError(f"stage {attn_map.get('stage')} has no cls token; pass a spatial query")
        row = 0
    else:
        if not 0 <= int(query) < qh * qw:
            raise ValueError(f"query token {query} is outside the {qh}x{qw} query grid")
        row = offset + int(query)
    row_weights = weights[row]
    cls_weight = float(row_weights[0]) if has_cls else 0.0
    return row_weights[offset:].reshape(kh, kw).numpy(), cls_weight


def plot_attention(ax: Any, image: Any, attn_map: dict[str, Any], query: int | str,
                   sample: int = 0, head: int | None = None, alpha: float = 0.65) -> None:
    """Draw one query's attention on the key grid over the image, honestly coarse: each key
    cell is one flat block over the image area it summarises (nearest, no smoothing), with
    the key grid's lines; the query cell (on the finer query grid) is outlined in red.
    Colours run from 0 (dark) to the largest weight in the panel (bright)."""
    import matplotlib.patches as patches

    pixels = _hwc(image)
    h, w = pixels.shape[:2]
    grid, cls_weight = attention_grid(attn_map, query, sample, head)
    (kh, kw), (qh, qw) = attn_map["kv_hw"], attn_map["q_hw"]
    ax.imshow(pixels, extent=(0, w, h, 0), cmap="gray" if pixels.ndim == 2 else None)
    ax.imshow(grid, extent=(0, w, h, 0), interpolation="nearest", cmap="inferno", alpha=alpha,
              vmin=0.0, vmax=max(float(grid.max()), 1e-12))  # dark = 0, bright = the top key
    for i in range(1, kh):
        ax.axhline(i * h / kh, color="white", linewidth=0.5, alpha=0.7)
    for j in range(1, kw):
        ax.axvline(j * w / kw, color="white", linewidth=0.5, alpha=0.7)
    if query == "cls":
        what = f"cls token (to cls key: {cls_weight:.2f})"
    else:
        r, c = divmod(int(query), qw)
        ax.add_patch(patches.Rectangle((c * w / qw, r * h / qh), w / qw, h / qh, fill=False,
                                       edgecolor="red", linewidth=2))
        what = f"query ({r},{c})" + (f", to cls key: {cls_weight:.2f}" if attn_map["has_cls"] else "")
    who = "mean of heads" if head is None else f"head {head}"
    ax.set_title(f"stage {attn_map.get('stage')} block {attn_map.get('block')}: q {qh}x{qw} -> "
                 f"kv {kh}x{kw}\n{what}, {who}", fontsize="small")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def last_blocks(maps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last block's map of every stage (what each stage finally attends to)."""
    last: dict[int, dict[str, Any]] = {}
    for m in maps:
        last[m["stage"]] = m
    return [last[s] for s in sorted(last)]


def plot_attention_maps(image: Any, maps: Sequence[dict[str, Any]],
                        queries: Sequence[str | tuple[float, float]], sample: int = 0,
                        head: int | None = None):
    """A grid: one row per query, one column per map (e.g. :func:`last_blocks`).

    A query is ``"cls"`` or an image pixel ``(x, y)``; a pixel picks, in every stage, the query
    token whose cell holds it (so the red cell grows as the grid coarsens). Stages without a
    cls token show a note in the ``"cls"`` row.
    """
    pixels = _hwc(image)
    hw = pixels.shape[:2]
    fig, axes = _figure(len(queries), len(maps), figsize=(3.3 * len(maps), 3.5 * len(queries)),
                        squeeze=False)
    for row, query in enumerate(queries):
        for col, m in enumerate(maps):
            ax = axes[row, col]
            if query == "cls" and not m["has_cls"]:
                ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
                ax.text(0.5, 0.5, f"stage {m['stage']}:\nno cls token", transform=ax.transAxes,
                        ha="center", va="center", color="white", backgroundcolor="black")
                ax.axis("off")
                continue
            token = "cls" if query == "cls" else query_token(m, query, hw)
            plot_attention(ax, pixels, m, token, sample, head)
    fig.tight_layout()
    return fig


__all__ = ["attention_grid", "last_blocks", "metrics_csv_path", "plot_attention",
           "plot_attention_maps", "plot_eval_preprocessing", "plot_images", "plot_learning_curves",
           "plot_metric_by_run", "plot_topk", "query_token", "read_metrics_csv"]
