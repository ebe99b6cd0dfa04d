"""CvT architecture description and the paper's presets, as plain data.

Every per-stage field is a 3-tuple (one value per stage). A scalar given for a
per-stage field is broadcast to all stages, except ``drop_path`` where a scalar
means "the last stage", which is how the paper states it (0, 0, 0.1), and ``depths``,
which sets the number of stages (a scalar is refused).
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass
from typing import Any

PROJECTIONS = ("dw_bn", "avg", "linear")
TOKEN_EMBEDS = ("conv", "patch")
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class CvTConfig:
    """Hyper-parameters of one CvT. Defaults are CvT-13 at 224 px."""

    num_classes: int = 1000
    in_chans: int = 3
    img_size: int = 224  # reference resolution: sizes the position embeddings when enabled
    embed_dims: tuple[int, ...] = (64, 192, 384)
    depths: tuple[int, ...] = (1, 2, 10)
    num_heads: tuple[int, ...] = (1, 3, 6)
    mlp_ratio: tuple[float, ...] = (4.0, 4.0, 4.0)
    # token embedding: "conv" = overlapping conv (paper default), "patch" = non-overlapping
    token_embed: tuple[str, ...] = ("conv", "conv", "conv")
    patch_size: tuple[int, ...] = (7, 3, 3)
    patch_stride: tuple[int, ...] = (4, 2, 2)
    patch_padding: tuple[int, ...] = (2, 1, 1)
    # convolutional projection of q/k/v (Table 8): dw_bn | avg | linear
    projection: tuple[str, ...] = ("dw_bn", "dw_bn", "dw_bn")
    kernel_qkv: tuple[int, ...] = (3, 3, 3)
    padding_q: tuple[int, ...] = (1, 1, 1)
    padding_kv: tuple[int, ...] = (1, 1, 1)
    stride_q: tuple[int, ...] = (1, 1, 1)
    stride_kv: tuple[int, ...] = (2, 2, 2)  # Table 7: stride 1 costs 6.55 GMACs vs 4.53
    qkv_bias: tuple[bool, ...] = (True, True, True)
    cls_token: tuple[bool, ...] = (False, False, True)
    pos_embed: tuple[bool, ...] = (False, False, False)  # Table 5: learned absolute, per stage
    drop_rate: tuple[float, ...] = (0.0, 0.0, 0.0)
    attn_drop: tuple[float, ...] = (0.0, 0.0, 0.0)
    drop_path: tuple[float, ...] = (0.0, 0.0, 0.1)  # max rate; ramps linearly over a stage's blocks
    activation: str = "quick_gelu"  # original code; "gelu" matches transformers exactly
    layer_norm_eps: float = 1e-5

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def total_stride(self) -> int:
        """Downsampling of the token map after the last stage (16 for the paper's models)."""
        stride = 1
        for s in self.patch_stride:
            stride *= s
        return stride

    @property
    def min_input_size(self) -> int:
        """Smallest image side the model accepts: the total stride (smaller leaves the last
        stage less than a token per input patch), or more when a custom geometry needs it to
        give every convolution and projection at least one output."""
        size = self.total_stride
        while not self.runs_at(size):
            size += 1
        return size

    def runs_at(self, size: int) -> bool:
        """Whether every stage's token grid, and its q and k/v grids, are non-empty at ``size``."""
        for i in range(self.num_stages):
            size = token_grid(size, *self.embed_geometry(i))
            method = self.projection[i]
            # only dw_bn convolves q ('avg' projects it linearly, as the network does)
            q = (token_grid(size, self.kernel_qkv[i], self.stride_q[i], self.padding_q[i])
                 if method == "dw_bn" else size)
            kv = (token_grid(size, self.kernel_qkv[i], self.stride_kv[i], self.padding_kv[i],
                             method == "avg") if method != "linear" else size)
            if min(size, q, kv) < 1:
                return False
        return True

    def check_input_size(self, h: int, w: int) -> None:
        """ValueError naming the minimum unless an h x w image is large enough to run."""
        minimum = self.min_input_size
        if min(h, w) < minimum:
            raise ValueError(
                f"input of {h}x{w} px is too small for this model (total stride "
                f"{self.total_stride}); the minimum size is {minimum}x{minimum} px")

    def embed_geometry(self, stage: int) -> tuple[int, int, int]:
        """(kernel, stride, padding) of a stage's token-embedding conv."""
        if self.token_embed[stage] == "patch":  # non-overlapping: kernel = stride, no padding
            return self.patch_stride[stage], self.patch_stride[stage], 0
        return self.patch_size[stage], self.patch_stride[stage], self.patch_padding[stage]

    @classmethod
    def build(cls, **kwargs: Any) -> "CvTConfig":
        """Make a config from loose values (lists, scalars), broadcasting to per-stage tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(
                f"unknown CvT option(s) {unknown}; valid options are: {sorted(names)}"
            )
        if not isinstance(kwargs.get("depths", ()), (list, tuple)):  # sets the stage count
            raise ValueError(f"CvT option 'depths' got {kwargs['depths']!r} "
                             f"({type(kwargs['depths']).__name__}); it takes one block count per "
                             "stage, e.g. [1,2,10]")
        depths = tuple(kwargs.get("depths", cls.depths))
        n = len(depths)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in kwargs:
                continue
            value = kwargs[f.name]
            if _is_per_stage(f):
                if isinstance(value, (list, tuple)):
                    value = tuple(value)
                elif f.name == "drop_path":
                    value = tuple([0.0] * (n - 1) + [float(value)])
                else:
                    value = (value,) * n
            out[f.name] = value
        config = dataclasses.replace(cls(), **out)
        config.validate()
        return config

    def replace(self, **kwargs: Any) -> "CvTConfig":
        """A copy with some fields changed (scalars broadcast as in :meth:`build`)."""
        return CvTConfig.build(**{**self.to_dict(), **kwargs})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        n = self.num_stages
        for f in dataclasses.fields(self):
            if _is_per_stage(f) and len(getattr(self, f.name)) != n:
                raise ValueError(
                    f"CvT option '{f.name}' has {len(getattr(self, f.name))} values but the "
                    f"model has {n} stages (depths={self.depths}); give one value per stage"
                )
            _check_type(f, getattr(self, f.name))
        if self.in_chans < 1:
            raise ValueError(f"CvT option 'in_chans' got {self.in_chans}; an image has at least "
                             "1 channel")
        for name in ("embed_dims", "mlp_ratio"):
            for i, v in enumerate(getattr(self, name)):
                if v <= 0:
                    raise ValueError(f"CvT option '{name}' got {v} in stage {i}; it must be > 0")
        for i, (dim, ratio) in enumerate(zip(self.embed_dims, self.mlp_ratio)):
            if int(dim * ratio) < 1:  # the MLP's hidden width, as Block sizes it
                raise ValueError(f"CvT option 'mlp_ratio' got {ratio} in stage {i}: the MLP would "
                                 f"have int({dim} * {ratio}) = 0 hidden units; it must be >= 1/{dim}")
        for i, depth in enumerate(self.depths):  # without blocks a cls token is a constant
            if depth < 1:
                raise ValueError(f"CvT option 'depths' got {depth} in stage {i}; every stage needs "
                                 "at least 1 block")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if heads < 1:
                raise ValueError(f"CvT option 'num_heads' got {heads}; every stage needs at least 1")
            if dim % heads:
                raise ValueError(f"embed dim {dim} is not divisible by its {heads} heads")
        for name in ("drop_rate", "attn_drop", "drop_path"):  # 1 would drop everything
            for rate in getattr(self, name):  # (drop path: then divide by its keep rate, 0)
                if not 0 <= rate < 1:
                    raise ValueError(f"CvT option '{name}' got {rate}; a rate must be in [0, 1)")
        _check_choice("projection", self.projection, PROJECTIONS)
        _check_choice("token_embed", self.token_embed, TOKEN_EMBEDS)
        _check_choice("activation", (self.activation,), ACTIVATIONS)
        for names, what, low in ((("patch_size", "kernel_qkv"), "a kernel size", 1),
                                 (("patch_stride", "stride_q", "stride_kv"), "a stride", 1),
                                 (("patch_padding", "padding_q", "padding_kv"), "a padding", 0)):
            for name in names:
                for i, v in enumerate(getattr(self, name)):
                    if v < low:
                        raise ValueError(f"CvT option '{name}' got {v} in stage {i}; {what} "
                                         f"must be >= {low}")
        # each block adds its attention output to its input token by token, so the q conv
        # ('dw_bn'; other methods project q linearly) must keep the token grid
        for i, method in enumerate(self.projection):
            k, s, p = self.kernel_qkv[i], self.stride_q[i], self.padding_q[i]
            if method == "avg" and self.padding_kv[i] > k // 2:  # PyTorch's pooling limit
                raise ValueError(
                    f"stage {i}: projection 'avg' pools k/v with kernel_qkv={k}, which allows "
                    f"padding_kv <= {k // 2} (half the window); got padding_kv={self.padding_kv[i]}")
            if method == "dw_bn" and (s != 1 or 2 * p != k - 1):
                raise ValueError(
                    f"stage {i}: stride_q={s}, padding_q={p} with kernel_qkv={k} would shrink the "
                    "query grid, but a block's output must keep its input's tokens (residual); "
                    "use stride_q=1 and padding_q=(kernel_qkv-1)/2 (an odd kernel_qkv), or "
                    "stride_kv to downsample keys and values")
        # the model refuses inputs below min_input_size (check_input_size), its own size included
        minimum = self.min_input_size
        if self.img_size < minimum:
            raise ValueError(
                f"img_size={self.img_size} is below the smallest input this geometry runs at, "
                f"{minimum} px (total stride {self.total_stride}): raise img_size to >= "
                f"{minimum}, or check the stride/kernel/padding options")
        if self.num_classes < 0:
            raise ValueError("num_classes must be >= 0 (0 means no classifier head)")


def token_grid(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    """Output length of a conv/pool along one axis (``ceil``: a ceil-mode pooling, which, as
    PyTorch does, drops a last window that would start in the right padding)."""
    span = size + 2 * padding - kernel
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


# Keys of a `model` config group (conf/model/) that choose or wrap a model, not shape it.
NON_ARCHITECTURE_KEYS = ("name", "pretrained", "grad_checkpointing")


def architecture_overrides(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The :class:`CvTConfig` overrides in a `model` config: every set (non-null) knob.

    Unknown keys are kept, so a misspelt knob fails in :meth:`CvTConfig.build` by name.
    """
    return {k: v for k, v in model_cfg.items() if v is not None and k not in NON_ARCHITECTURE_KEYS}


def _is_per_stage(f: dataclasses.Field) -> bool:
    return str(f.type).startswith("tuple")


# a field's (element) type -> (test, what it takes); bool is an int to Python: kept apart
_TYPES = {"int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
          "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
          "bool": (lambda v: isinstance(v, bool), "true or false"),
          "str": (lambda v: isinstance(v, str), "a string")}


def _check_type(f: dataclasses.Field, value: Any) -> None:
    """Refuse a value of the wrong type by name (the string "false" would count as true)."""
    kind = re.sub(r"^tuple\[(\w+), \.\.\.\]$", r"\1", str(f.type))
    test, what = _TYPES[kind]
    for i, v in enumerate(value if _is_per_stage(f) else (value,)):
        if not test(v):
            where = f" in stage {i}" if _is_per_stage(f) else ""
            raise ValueError(f"CvT option '{f.name}' got {v!r} ({type(v).__name__}){where}; it "
                             f"takes {what}")


def _check_choice(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for v in values:
        if v not in allowed:
            raise ValueError(f"CvT option '{name}' got '{v}'; choose one of {list(allowed)}")


# The paper's models (Table 2) and a CPU-sized one. Fields not given take CvT-13's values.
_W24 = dict(embed_dims=(192, 768, 1024), depths=(2, 2, 20), num_heads=(3, 12, 16),
            drop_path=(0.0, 0.0, 0.3))
PRESETS: dict[str, dict[str, Any]] = {
    "cvt13": dict(),
    "cvt13_384": dict(img_size=384),
    "cvt21": dict(depths=(1, 4, 16)),
    "cvt21_384": dict(depths=(1, 4, 16), img_size=384),
    "cvt_w24": dict(_W24),
    "cvt_w24_384": dict(_W24, img_size=384),
    # ~0.5M parameters, for 32 px inputs on a CPU: the same three-stage design, narrower and
    # with a gentler first stride so a 32 px image still gives a 2x2 map in stage 3.
    "cvt_tiny": dict(
        img_size=32, embed_dims=(32, 64, 128), depths=(1, 1, 2), num_heads=(1, 2, 4),
        patch_size=(3, 3, 3), patch_stride=(2, 2, 2), patch_padding=(1, 1, 1),
        drop_path=(0.0, 0.0, 0.0),
    ),
}


def preset_config(name: str, **overrides: Any) -> CvTConfig:
    """The config of a named preset, with overrides applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown CvT preset '{name}'; available: {sorted(PRESETS)}")
    return CvTConfig.build(**{**PRESETS[name], **overrides})


__all__ = ["CvTConfig", "PRESETS", "architecture_overrides", "preset_config"]
