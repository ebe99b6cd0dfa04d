"""Loading published CvT weights, strictly: every tensor has a home or loading fails.

Sources: a transformers directory (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``), a Hub id (``microsoft/cvt-13``), or one weights file: an original
Microsoft ``.pth`` (our own names), a Lightning/our ``.pt``/``.ckpt``, or a transformers
``.safetensors``/``.bin``. Pickles are read with ``weights_only=True``; nothing executes code.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PRESETS, CvTConfig, preset_config
from .cvt import resample_pos_embed, token_grid
from .hf import ARCH_FIELDS, CONFIG_NAME, IMAGE_SIZE, WEIGHT_NAMES, config_from_hf, download
from .keymap import rename_keys

log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model", "model_state")  # training checkpoints nest the weights
# DDP / LightningModule attribute names, and torch.compile's wrapper (OptimizedModule)
_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")
_EMA = "ema.module."  # cvt_lab.module.CvTModule's EMA copy (beside its trained ``net.``)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# a path, not a Hub id: any of its suffixes (the training code's 'model_best.pth.tar' too)
_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tar")
# CvtModel.save_pretrained (a backbone alone) writes its keys without CvtForImageClassification's 'cvt.'
_HF_BACKBONE = "encoder.stages."
CONFIG_KEY = "cvt_config"  # top-level key of cvt-lab training checkpoints: the net's CvTConfig
# the fix for weights of another architecture than the model, when no closer one is known
_OWN_VALUES_HINT = ("build the model with the checkpoint's values (model.<field>=... on the command "
                    "line), or call create_model(pretrained=...) without a preset name to take "
                    "them all from it")


class CheckpointError(ValueError):
    """The checkpoint does not fit the model (names, shapes or architecture)."""


@dataclass
class Checkpoint:
    """Weights under our names, with where they came from."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "transformers" or "original" (our names are the original code's)
    source: str
    hf_config: dict[str, Any] | None = None
    saved_config: dict[str, Any] | None = None  # a cvt-lab training checkpoint's CONFIG_KEY

    @property
    def num_classes(self) -> int:
        head = self.state_dict.get("head.weight")
        return 0 if head is None else head.shape[0]

    def config(self, **overrides: Any) -> CvTConfig:
        """The architecture: from config.json or the saved config when there is one, else read
        off the shapes (which record no strides or paddings). The resolution, where neither
        the config nor position-embedding grids record it, from the name (as Microsoft names
        theirs: ``CvT-13-384x384-IN-1k.pth``, ``microsoft/cvt-13-384``), else the preset's."""
        config = self._config(**overrides)
        if ("img_size" in overrides or self.saved_config is not None or any(config.pos_embed)
                or IMAGE_SIZE in (self.hf_config or {})):
            return config
        size = _size_in_name(self.source)
        if size is None:
            log.warning(f"'{self.source}' states no image size (as in 'CvT-13-384x384-IN-1k.pth'): "
                        f"assuming {config.img_size} px, the size count_macs(model) costs by "
                        "default; pass img_size=... for another")
            return config
        return config.replace(img_size=size)

    def _config(self, **overrides: Any) -> CvTConfig:
        if self.hf_config is not None:
            return config_from_hf(self.hf_config, **overrides)
        if self.saved_config is not None:
            return CvTConfig.build(**{**self.saved_config, **overrides})
        return infer_config(self.state_dict, **overrides)

    @property
    def backbone(self) -> bool:
        """transformers weights without the final LayerNorm and the classifier: a ``CvtModel``'s."""
        return self.format == "transformers" and not any(
            k.startswith(("norm.", "head.")) for k in self.state_dict)

    @property
    def activation(self) -> str | None:
        """The activation the weights were trained with, when known: exact GELU for
        transformers weights, and what a cvt-lab checkpoint's saved config states."""
        if self.format == "transformers":
            return "gelu"
        return self.saved_config.get("activation") if self.saved_config else None

    @property
    def stated_config(self) -> CvTConfig | None:
        """The architecture the file states, if it states one."""
        return None if self.hf_config is None and self.saved_config is None else self._config()


@dataclass
class LoadReport:
    source: str
    format: str
    head_reset: bool = False
    checkpoint_classes: int = 0
    notes: list[str] = field(default_factory=list)


def read_checkpoint(source: str | Path) -> Checkpoint:
    """Read weights (and config.json when present) from a directory, file or Hub id."""
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and _HUB_ID.match(source) and not set(path.suffixes) & set(_FILE_SUFFIXES):
            path = download(source)
        else:
            raise FileNotFoundError(f"no checkpoint at '{source}' (not a file, directory or Hub id)")
    hf_config = None
    if path.is_dir():
        weights = next((path / n for n in WEIGHT_NAMES if (path / n).exists()), None)
        if weights is None:
            raise FileNotFoundError(f"'{path}' holds none of {list(WEIGHT_NAMES)}")
        if (path / CONFIG_NAME).exists():
            hf_config = json.loads((path / CONFIG_NAME).read_text())
        path = weights
    raw = _read_tensors(path)
    saved = raw.get(CONFIG_KEY) if isinstance(raw, dict) else None
    state = _unwrap(raw, str(source))
    if any(k.startswith(("cvt.", "classifier.", _HF_BACKBONE)) for k in state):
        state = {"cvt." + k if k.startswith(_HF_BACKBONE) else k: v for k, v in state.items()}
        state, unknown = rename_keys(state, to_hf=False)
        if unknown:
            raise CheckpointError(f"'{source}': transformers checkpoint with keys CvT does not "
                                  f"have: {_listing(unknown)}")
        return Checkpoint(state, "transformers", str(source), hf_config)
    return Checkpoint(state, "original", str(source), hf_config, saved)


def _size_in_name(source: str) -> int | None:
    """The square resolution a checkpoint's file or repository name states: a part of it
    (between '-', '_' or '.') such as '384x384', or the published sizes 224 and 384 alone."""
    for part in re.split(r"[-_.]", Path(source).name):
        if m := re.fullmatch(r"(\d+)x\1", part, re.IGNORECASE):
            return int(m.group(1))
        if part in ("224", "384"):
            return int(part)
    return None


def _read_tensors(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{source}' is not a state dict of tensors")
    if any(k.startswith(_EMA) for k in obj):  # cvt-lab trained with ema_decay: net.* and ema.*
        obj = {k[len(_EMA):]: v for k, v in obj.items() if k.startswith(_EMA)}  # what it evaluated
    while obj and (prefix := next((p for p in _PREFIXES if all(k.startswith(p) for k in obj)), None)):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def infer_config(state_dict: dict[str, torch.Tensor], **overrides: Any) -> CvTConfig:
    """The config of an original-format state dict: widths, depths, kernels, tokens and q/k/v
    biases from the shapes; head counts, strides and paddings (which no shape records) from the
    preset of the same widths and depths, or from ``overrides`` (with no preset, the values
    CvT-13 has in every stage fill the rest). A token-embedding kernel other than the
    preset's is refused unless ``overrides`` say how it strides and pads, and so is a stage
    without projection convs unless they say which weightless projection it had."""
    stages = sorted(int(m.group(1)) for k in state_dict
                    if (m := re.match(r"stage(\d+)\.patch_embed\.proj\.weight$", k)))
    if not stages:
        raise CheckpointError("no 'stage{i}.patch_embed.proj.weight' keys: not a CvT state dict")
    embeds = [state_dict[f"stage{i}.patch_embed.proj.weight"] for i in stages]
    depths = [1 + max((int(m.group(1)) for k in state_dict
                       if (m := re.match(rf"stage{i}\.blocks\.(\d+)\.", k))), default=-1)
              for i in stages]
    dims = [w.shape[0] for w in embeds]
    shape_fields: dict[str, Any] = dict(
        in_chans=embeds[0].shape[1], embed_dims=dims, depths=depths,
        patch_size=[w.shape[-1] for w in embeds],
        cls_token=[f"stage{i}.cls_token" in state_dict for i in stages],
        qkv_bias=[f"stage{i}.blocks.0.attn.proj_q.bias" in state_dict for i in stages],
        pos_embed=[f"stage{i}.pos_embed" in state_dict for i in stages],
        num_classes=state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
        mlp_ratio=[state_dict[f"stage{i}.blocks.0.mlp.fc1.weight"].shape[0] / d
                   for i, d in zip(stages, dims)],
    )
    q_convs = [state_dict.get(f"stage{i}.blocks.0.attn.conv_proj_q.conv.weight") for i in stages]
    if all(w is not None for w in q_convs):
        shape_fields.update(projection="dw_bn", kernel_qkv=[w.shape[-1] for w in q_convs])
    elif "projection" not in overrides:  # 'avg' and 'linear' hold no weights
        bare = [str(i) for i, w in enumerate(q_convs) if w is None]
        which = (f"stage {bare[0]} has no q/k/v projection convs: it" if len(bare) == 1 else
                 f"stages {', '.join(bare)} have no q/k/v projection convs: they")
        examples = " or ".join(str(["dw_bn" if w is not None else m for w in q_convs])
                               for m in ("avg", "linear"))
        raise CheckpointError(f"{which} projected with 'avg' or 'linear', which hold no weights to "
                              "tell them apart; pass projection=... with one method per stage, "
                              f"e.g. {examples}")
    preset = next(iter(_presets_of(dims, depths)), None)
    if preset is None and "num_heads" not in overrides:
        raise CheckpointError(f"weights of embed_dims {dims} and depths {depths} match no preset "
                              f"({sorted(PRESETS)}); pass num_heads=... (and any non-default "
                              "strides) to build it")
    base = preset_config(preset) if preset else CvTConfig()
    if not {"token_embed", "patch_stride", "patch_padding"} & set(overrides):
        for i, k in enumerate(shape_fields["patch_size"]):
            if i >= base.num_stages:
                raise CheckpointError(
                    f"stage {i} token embedding has a {k}x{k} kernel and no preset has a stage "
                    f"{i}; weights record no stride or padding: pass token_embed=... or "
                    "patch_stride/patch_padding")
            if k != base.patch_size[i]:  # the stride and padding that go with it are unknown
                raise CheckpointError(
                    f"stage {i} token embedding has a {k}x{k} kernel, preset {preset or 'cvt13'}'s "
                    f"{base.patch_size[i]}x{base.patch_size[i]}, and weights record no stride or "
                    "padding: pass token_embed=... or patch_stride/patch_padding")
    fields = {**shape_fields, **overrides}
    if preset is None:  # any stage count: CvT-13's values that fit it
        fields = {**_stage_defaults(len(stages)), **fields}
    config = preset_config(preset, **fields) if preset else CvTConfig.build(**fields)
    if any(config.pos_embed) and "img_size" not in overrides:
        config = config.replace(img_size=_trained_img_size(config, state_dict))
    return config


def _stage_defaults(n: int) -> dict[str, Any]:
    """CvT-13's per-stage values for ``n`` stages: those equal in every stage and the drop-path
    rate, which as a scalar goes to the last stage; with at most 3 stages, the token-embedding
    strides and paddings of its first ``n`` (infer_config checked their kernels)."""
    base = CvTConfig()
    out = {name: value[-1] for name, value in base.to_dict().items()
           if isinstance(value, tuple) and (len(set(value)) == 1 or name == "drop_path")}
    if n <= base.num_stages:
        out.update(patch_stride=base.patch_stride[:n], patch_padding=base.patch_padding[:n])
    return out


def _trained_img_size(config: CvTConfig, state_dict: dict[str, torch.Tensor]) -> int:
    """The resolution the position embeddings were learned at (their grids record it); a
    preset's size would resample them on load and change the trained model's outputs."""
    i = config.pos_embed.index(True)
    side = math.isqrt(state_dict[f"stage{i}.pos_embed"].shape[1])
    size = side = side * math.prod(config.patch_stride[: i + 1])
    for j in range(config.num_stages):
        side = token_grid(side, *config.embed_geometry(j))
        key = f"stage{j}.pos_embed"
        if config.pos_embed[j] and state_dict[key].shape[1] != side * side:
            raise CheckpointError(f"cannot tell the image size the position embeddings were "
                                  f"trained at ({key}: {tuple(state_dict[key].shape)}); pass img_size=...")
    return size


def load_checkpoint(model: nn.Module, ckpt: Checkpoint, reset_head: bool = False) -> LoadReport:
    """Copy ``ckpt`` into ``model`` or raise :class:`CheckpointError` listing every misfit.

    ``reset_head=True`` keeps the model's own (new) classifier and ignores the checkpoint's,
    for fine-tuning on another label set. A backbone (transformers' ``CvtModel``) has no final
    norm and no classifier: the model keeps its own (new) ones, and the report says so.
    BatchNorm ``num_batches_tracked`` may be absent.
    """
    report = LoadReport(ckpt.source, ckpt.format, reset_head, ckpt.num_classes)
    if (stated := ckpt.stated_config) is not None:
        _check_architecture(model.config, stated, ckpt.source)
    state = dict(ckpt.state_dict)
    expected = model.state_dict()
    report.notes += _resample_pos_embeds(model, state, expected)
    new = ("norm.", "head.") if ckpt.backbone else ("head.",) if reset_head else ()
    if new:
        state = {k: v for k, v in state.items() if not k.startswith(new)}
        expected = {k: v for k, v in expected.items() if not k.startswith(new)}
    missing, unexpected, mismatched = state_misfits(expected, state)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint '{ckpt.source}' ({ckpt.format} format, {_describe(state)}) does not "
                 f"fit this CvT ({_describe(expected)}); nothing was loaded."]
        for title, items in (("shape mismatches", mismatched), ("missing from the checkpoint", missing),
                             ("unexpected in the checkpoint", unexpected)):
            if items:
                lines.append(f"  {len(items)} {title}: {_listing(items)}")
        hints = []
        if any(m.startswith("head.") for m in mismatched):
            hints.append("for another number of classes, pass num_classes / reset_head=True")
        if (shape := _stage_shape(state)) != _stage_shape(expected) and _presets_of(*shape):
            hints.append(_preset_hint(*shape))
        fused_state, fused_model = _bn_fused(state), _bn_fused(expected)
        if fused_state and not fused_model:
            hints.append("the checkpoint was saved after fuse_bn(): build the model, call "
                         "model.eval().fuse_bn(), then load_pretrained(model, path)")
        elif fused_model and not fused_state:
            hints.append("the model is BatchNorm-fused: load the checkpoint before fuse_bn()")
        lines += [f"  ({hint})" for hint in hints or [_OWN_VALUES_HINT]]
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=False)  # every key was checked above
    for note in report.notes:
        log.info(note)
    classes = model.config.num_classes
    if ckpt.backbone:
        report.head_reset = classes > 0
        report.notes.append("the checkpoint is a backbone (transformers' CvtModel: no final "
                            "LayerNorm, no classifier): the model's final norm is new"
                            + (f", and so is its head ({classes} classes)" if classes else ""))
        log.warning(report.notes[-1])
    elif reset_head:
        report.notes.append(f"classifier reset: the checkpoint has {ckpt.num_classes} classes, "
                            f"the model a new head with {classes}")
        log.warning(report.notes[-1])
    return report


def _bn_fused(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is of a model after fuse_bn(): its projection convs have biases."""
    return any(re.search(r"\.conv_proj_[qkv]\.conv\.bias$", k) for k in state)


def state_misfits(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                  ) -> tuple[list[str], list[str], list[str]]:
    """Keys ``state`` lacks, keys it has in excess, and shape mismatches (one line each)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    return missing, unexpected, mismatched


def _resample_pos_embeds(model: nn.Module, state: dict[str, torch.Tensor],
                         expected: dict[str, torch.Tensor]) -> list[str]:
    """Position embeddings learned at another resolution, resampled in ``state`` to the model's
    grids (as the model does for inputs of another size): fine-tuning at any resolution."""
    notes = []
    for key, value in state.items():
        want = expected.get(key)
        if not key.endswith("pos_embed") or want is None or value.shape == want.shape:
            continue
        side = math.isqrt(value.shape[1])
        if side * side != value.shape[1] or value.shape[2] != want.shape[2]:
            continue  # not a square grid of the same width: reported as a shape mismatch
        grid = model.get_submodule(key.rpartition(".")[0]).grid
        with torch.no_grad():
            state[key] = resample_pos_embed(value.float(), (side, side), grid).to(value.dtype)
        notes.append(f"{key}: resampled from a {side}x{side} to a {grid[0]}x{grid[1]} grid")
    return notes


def load_pretrained(model: nn.Module, source: str | Path, reset_head: bool = False) -> LoadReport:
    """Load weights from a directory, file or Hub id into ``model`` (see :func:`load_checkpoint`)."""
    return load_checkpoint(model, read_checkpoint(source), reset_head)


def _check_architecture(ours: CvTConfig, theirs: CvTConfig, source: str) -> None:
    """Strides, paddings and head counts leave no trace in shapes, so compare configs."""
    diffs = [f"{f}: model {getattr(ours, f)} vs checkpoint {getattr(theirs, f)}"
             for f in ARCH_FIELDS if getattr(ours, f) != getattr(theirs, f)]
    diffs += [f"stage {i} embedding (kernel, stride, padding): model {ours.embed_geometry(i)} vs "
              f"checkpoint {theirs.embed_geometry(i)}"
              for i in range(min(ours.num_stages, theirs.num_stages))
              if ours.embed_geometry(i) != theirs.embed_geometry(i)]
    if diffs:
        shape = (theirs.embed_dims, theirs.depths)
        hint = ("I" + _preset_hint(*shape)[1:]
                if shape != (ours.embed_dims, ours.depths) and _presets_of(*shape) else
                _OWN_VALUES_HINT[0].upper() + _OWN_VALUES_HINT[1:])
        raise CheckpointError(f"checkpoint '{source}' is another architecture: "
                              + "; ".join(diffs) + ". " + hint)


def _presets_of(dims: Any, depths: Any) -> list[str]:
    """The presets of these per-stage widths and depths (e.g. cvt21 and cvt21_384)."""
    return [name for name, p in PRESETS.items()
            if tuple(p.get("embed_dims", CvTConfig.embed_dims)) == tuple(dims)
            and tuple(p.get("depths", CvTConfig.depths)) == tuple(depths)]


def _preset_hint(dims: Any, depths: Any) -> str:
    first, *others = _presets_of(dims, depths)
    also = " (or " + ", ".join(f"{name}'s" for name in others) + ")" if others else ""
    return (f"its embed_dims and depths are preset {first}'s{also}: build that preset, "
            f"model={first} on the command line")


def function_diffs(ours: CvTConfig, theirs: CvTConfig) -> list[str]:
    """The fields in which two configs of the same weights compute differently (the
    activation, strides, paddings, head counts...; not the class count or dropout rates)."""
    fields = [f for f in (*ARCH_FIELDS, "activation", "layer_norm_eps")
              if getattr(ours, f) != getattr(theirs, f)]
    if any(ours.embed_geometry(i) != theirs.embed_geometry(i)
           for i in range(min(ours.num_stages, theirs.num_stages))):
        fields += [f for f in ("token_embed", "patch_size", "patch_stride", "patch_padding")
                   if getattr(ours, f) != getattr(theirs, f)]
    return fields


def _stage_shape(state: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """(embed_dims, depths) of a state dict under our names."""
    dims = [v.shape[0] for k, v in sorted(state.items())
            if re.match(r"stage\d+\.patch_embed\.proj\.weight$", k)]
    depths = [len({k.split(".")[2] for k in state if k.startswith(f"stage{i}.blocks.")})
              for i in range(len(dims))]
    return dims, depths


def _describe(state: dict[str, torch.Tensor]) -> str:
    dims, depths = _stage_shape(state)
    return f"embed_dims {dims}, depths {depths}"


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


__all__ = ["CONFIG_KEY", "Checkpoint", "CheckpointError", "LoadReport", "infer_config", "load_checkpoint",
           "load_pretrained", "read_checkpoint"]
