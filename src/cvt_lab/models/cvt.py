"""The Convolutional vision Transformer (Wu et al. 2021, arXiv 2103.15808).

Tokens travel as (B, N, C). Where a block needs a feature map it takes a
(B, C, H, W) *view* of the same memory (channels-last strides), so the conv
projections cost no copies (one per block where a cls token must be split off). Module and parameter names follow the original
research code (``stage{i}.patch_embed``, ``blocks.{j}.attn.conv_proj_q``...),
which keeps the checkpoint converters short.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import CvTConfig, token_grid


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the original CvT code's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample (never the skip path)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class ConvEmbed(nn.Module):
    """Token embedding: a strided conv over the previous map, then LayerNorm over channels.

    Args:
        in_chans: channels of the input map.
        dim: embedding width.
        kernel, stride, padding: conv geometry (overlapping 7/4/2 in stage 1 of the paper;
            kernel == stride and padding 0 is the non-overlapping "patch" ablation).
    """

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel, stride, padding)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        return self.norm(x), h, w


class ConvProjection(nn.Module):
    """Squeezes a (B, C, H, W) map into tokens for q, k or v (paper Sec. 3.2, Table 8).

    ``dw_bn``: depthwise conv (no bias) + BatchNorm; ``avg``: average pooling;
    ``linear``: identity (plain ViT projection).
    """

    def __init__(self, dim: int, method: str, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.method = method
        self.kernel, self.stride, self.padding = kernel, stride, padding
        if method == "dw_bn":
            self.conv = nn.Conv2d(dim, dim, kernel, stride, padding, groups=dim, bias=False)
            # The conv sees channels-last maps, so its weight gradient comes back with
            # channels-last strides. Give the weight those strides (the same memory order:
            # dim 1 has size 1) so DDP's gradient buckets match it instead of warning.
            w = self.conv.weight.data
            self.conv.weight.data = w.as_strided(w.shape, (kernel * kernel, 1, kernel, 1))
            self.bn = nn.BatchNorm2d(dim)
        elif method == "avg":
            self.pool = nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Size of the projected token map: what the queries actually attend over."""
        if self.method == "linear":
            return h, w
        ceil = self.method == "avg"  # pooling uses ceil_mode, as the original code does
        return tuple(token_grid(n, self.kernel, self.stride, self.padding, ceil) for n in (h, w))

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold the (eval-mode) BatchNorm into the conv: one op instead of two at inference."""
        if self.method != "dw_bn" or isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, groups=conv.groups, bias=True).to(conv.weight)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "dw_bn":
            x = self.bn(self.conv(x))
        elif self.method == "avg":
            x = self.pool(x)
        return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


class ConvAttention(nn.Module):
    """Multi-head attention over convolutionally projected q/k/v.

    The scale is ``dim ** -0.5`` (full width, as both published implementations do). A
    cls token, when present, skips the conv projection and joins before the Linears.
    """

    def __init__(self, dim: int, num_heads: int, method: str, kernel: int,
                 padding_q: int, padding_kv: int, stride_q: int, stride_kv: int,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 has_cls: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim ** -0.5
        self.has_cls = has_cls
        self.attn_drop = attn_drop
        # the original code never average-pools q: it projects q linearly with 'avg'
        q_method = "linear" if method == "avg" else method
        self.conv_proj_q = ConvProjection(dim, q_method, kernel, stride_q, padding_q)
        self.conv_proj_k = ConvProjection(dim, method, kernel, stride_kv, padding_kv)
        self.conv_proj_v = ConvProjection(dim, method, kernel, stride_kv, padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _project(self, fmap: torch.Tensor, cls: torch.Tensor | None, conv: ConvProjection,
                 linear: nn.Linear) -> torch.Tensor:
        """conv projection -> Linear -> heads; the cls token skips the conv.

        The cls token joins *after* the Linear (the same map, row by row): concatenating
        before it would hand the conv projection a strided slice of the gradient in
        backward, which sends its BatchNorm down a slow, copying path.
        """
        x = linear(conv(fmap))
        if cls is not None:
            x = torch.cat([linear(cls), x], dim=1)
        b, n, c = x.shape  # (B, N, C) -> (B, heads, N, C / heads)
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, h: int, w: int, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        cls = None
        if self.has_cls:
            # one dense copy of the map: a strided slice would make each conv copy it again
            cls, x = x[:, :1], x[:, 1:].contiguous()
        fmap = x.reshape(b, h, w, c).permute(0, 3, 1, 2)  # a channels-last view, no copy
        q = self._project(fmap, cls, self.conv_proj_q, self.proj_q)
        k = self._project(fmap, cls, self.conv_proj_k, self.proj_k)
        v = self._project(fmap, cls, self.conv_proj_v, self.proj_v)
        weights = None
        if need_weights:  # explicit path, for visualisation
            weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = F.dropout(weights, self.attn_drop, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, q.shape[2], c)  # (B, heads, N, d) -> (B, N, C)
        return self.proj_drop(self.proj(out)), weights


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, activation: str,
                 drop: float, drop_path: float, eps: float, **attn_kwargs: Any) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ConvAttention(dim, num_heads, proj_drop=drop, **attn_kwargs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation, drop)

    def forward(self, x: torch.Tensor, h: int, w: int, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(self.norm1(x), h, w, need_weights)
        x = x + self.drop_path(attn_out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


class Stage(nn.Module):
    """Token embedding, optional position embedding and cls token, then blocks."""

    def __init__(self, cfg: CvTConfig, index: int, in_chans: int, grid: tuple[int, int]) -> None:
        super().__init__()
        i = index
        dim = cfg.embed_dims[i]
        kernel, stride, padding = cfg.embed_geometry(i)
        self.patch_embed = ConvEmbed(in_chans, dim, kernel, stride, padding, cfg.layer_norm_eps)
        self.grid = grid  # token grid at cfg.img_size; position embeddings are sized for it
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim)) if cfg.pos_embed[i] else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.cls_token[i] else None
        self.pos_drop = nn.Dropout(cfg.drop_rate[i])
        rates = torch.linspace(0, cfg.drop_path[i], cfg.depths[i], device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads[i], cfg.mlp_ratio[i], cfg.activation, cfg.drop_rate[i],
                  rate, cfg.layer_norm_eps, method=cfg.projection[i], kernel=cfg.kernel_qkv[i],
                  padding_q=cfg.padding_q[i], padding_kv=cfg.padding_kv[i],
                  stride_q=cfg.stride_q[i], stride_kv=cfg.stride_kv[i], qkv_bias=cfg.qkv_bias[i],
                  attn_drop=cfg.attn_drop[i], has_cls=cfg.cls_token[i])
            for rate in rates
        )
        self.grad_checkpointing = False

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.grid:
            return self.pos_embed
        # resolution differs from the reference: resample the learned grid
        return resample_pos_embed(self.pos_embed, self.grid, (h, w))

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, list[dict[str, Any]]]:
        x, h, w = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self._pos_embed(h, w)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x)
        maps = []
        for block in self.blocks:
            if self.grad_checkpointing and self.training and not need_weights:
                x, _ = checkpoint_block(block, x, h, w)
                continue
            x, weights = block(x, h, w, need_weights)
            if need_weights:
                maps.append({"attn": weights, "q_hw": (h, w), "has_cls": self.cls_token is not None,
                             "kv_hw": block.attn.conv_proj_k.out_hw(h, w)})
        cls = None
        if self.cls_token is not None:
            cls, x = x[:, :1], x[:, 1:]
        b, _, c = x.shape
        fmap = x.transpose(1, 2).reshape(b, c, h, w)
        return fmap, cls, maps


def checkpoint_block(block: Block, x: torch.Tensor, h: int, w: int
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``block`` without keeping its activations; backward recomputes them.

    Eager recomputation runs the block's forward a second time, which would move its
    BatchNorms' running statistics twice per step; they are put back after it. (Compiled
    graphs recompute without that side effect, and reject a ``context_fn``.)
    """
    if torch.compiler.is_compiling():
        return checkpoint(block, x, h, w, use_reentrant=False)
    return checkpoint(block, x, h, w, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _buffers_restored(block)))


@contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    saved = [b.clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(module.buffers(), saved):
                b.copy_(value)


def resample_pos_embed(pe: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
                       ) -> torch.Tensor:
    """Position embeddings (1, gh * gw, C) learned on ``grid``, resampled bicubically to ``size``."""
    x = pe.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return x.flatten(2).transpose(1, 2)


class CvT(nn.Module):
    """Convolutional vision Transformer. See :class:`CvTConfig` for the knobs."""

    def __init__(self, config: CvTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        chans, gh, gw = config.in_chans, config.img_size, config.img_size
        for i in range(config.num_stages):
            k, s, p = config.embed_geometry(i)
            gh, gw = token_grid(gh, k, s, p), token_grid(gw, k, s, p)
            self.add_module(f"stage{i}", Stage(config, i, chans, (gh, gw)))
            chans = config.embed_dims[i]
        self.num_features = chans
        self.norm = nn.LayerNorm(chans, eps=config.layer_norm_eps)
        self.apply(_init_weights)  # before the head, which the original initialises apart
        self.head = _classifier(chans, config.num_classes)
        for stage in self.stages:
            for p in (stage.cls_token, stage.pos_embed):
                if p is not None:
                    nn.init.trunc_normal_(p, std=0.02)

    @property
    def stages(self) -> list[Stage]:
        return [getattr(self, f"stage{i}") for i in range(self.config.num_stages)]

    def no_weight_decay(self) -> set[str]:
        """Names of parameters AdamW should not decay: norms, biases, cls tokens, pos embeds."""
        return {name for name, p in self.named_parameters()
                if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory, ~30% more compute."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        """New head for fine-tuning on another label set, on the model's device and dtype."""
        like = {"device": self.norm.weight.device, "dtype": self.norm.weight.dtype}
        self.head = _classifier(self.num_features, num_classes, **like)
        self.config = self.config.replace(num_classes=num_classes)

    @property
    def bn_fused(self) -> bool:
        return any(isinstance(m, ConvProjection) and isinstance(getattr(m, "bn", None), nn.Identity)
                   for m in self.modules())

    def fuse_bn(self) -> "CvT":
        """Fold every projection BatchNorm into its depthwise conv, for inference or export to
        runtimes: same outputs in eval mode, fewer ops. The model then no longer trains its
        BatchNorms and its state dict has conv biases instead of BN entries."""
        if self.training:
            raise RuntimeError("fuse_bn() folds running statistics: call model.eval() first")
        for m in self.modules():
            if isinstance(m, ConvProjection):
                m.fuse_bn()
        return self

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"CvT expects images of shape (batch, {self.config.in_chans}, height, width); "
                f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(
                f"CvT expects floating-point images; got {x.dtype}: convert and normalise them "
                "first, e.g. (x.float() / 255 - mean) / std")
        self.config.check_input_size(x.shape[-2], x.shape[-1])

    def forward_features(self, x: torch.Tensor, need_weights: bool = False
                         ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Pooled, normalised features (B, C) and, on request, every block's attention."""
        self.check_input(x)  # compiled too: it adds guards on the input's size, no graph break
        maps: list[dict[str, Any]] = []
        cls = None
        for i, stage in enumerate(self.stages):
            x, cls, stage_maps = stage(x, need_weights)
            for j, m in enumerate(stage_maps):
                maps.append({"stage": i, "block": j, **m})
        if cls is not None:
            return self.norm(cls.squeeze(1)), maps
        # no cls token: normalise every token, then average (as the original code does)
        return self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[0])

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Logits and every block's attention weights (B, heads, N_q, N_kv), with grids."""
        features, maps = self.forward_features(x, need_weights=True)
        return self.head(features), maps


def _init_weights(m: nn.Module) -> None:
    """The original code's init ('trunc_norm') of every stage: Linear trunc-normal(0.02), zero
    bias; norms 1/0; convs PyTorch's default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _classifier(dim: int, num_classes: int, **like: Any) -> nn.Module:
    """The head as the original initialises it: weight trunc-normal(0.02), bias at PyTorch's
    default (uniform in +-1/sqrt(dim)); no head (features out) for ``num_classes`` 0."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(dim, num_classes, **like)
    nn.init.trunc_normal_(head.weight, std=0.02)
    return head


__all__ = ["CvT", "QuickGELU", "DropPath", "resample_pos_embed", "token_grid"]
