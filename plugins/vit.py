"""Vision Transformers from timm, with short names (vit_b16 = vit_base_patch16_224) in
registry.toml. One layer group per transformer block, so layer-wise learning-rate decay
works as in BEiT/MAE fine-tuning. Any timm VisionTransformer can be used as
`vit/<timm name>`."""

from __future__ import annotations

from zoo_adapt.plugin_api import INCEPTION, CamTarget, Head, LayerGroup, Normalization, ZooAdaptError, hookimpl

from . import _timm

# upstream id: (width, depth), for answers that need no model
KNOWN = {
    "vit_tiny_patch16_224": (192, 12),
    "vit_small_patch16_224": (384, 12),
    "vit_base_patch16_224": (768, 12),
    "vit_large_patch16_224": (1024, 24),
}
# timm's pretrained_cfg of the AugReg weights of the models above
AUGREG = Normalization(**INCEPTION, input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.9)


def _shape(entry, model):
    if model is not None:
        return model.num_features, len(model.blocks)
    return KNOWN.get(entry.upstream)


@hookimpl
def build_backbone(entry, pretrained):
    # dynamic_img_size: any input size works, and the state dict keeps the plain
    # model's shapes, so exports load into timm.create_model(name, num_classes=N).
    model = _timm.build(entry, pretrained, entry.weights, dynamic_img_size=True)
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed")):
        raise ZooAdaptError(
            f"plugin {entry.plugin} serves timm Vision Transformers; {entry.upstream!r} is "
            f"not one (try timm/{entry.upstream})"
        )
    return model


@hookimpl
def backbone_head(entry, model):
    shape = _shape(entry, model)
    if shape:
        return Head("head", shape[0])


@hookimpl
def backbone_groups(entry, model):
    shape = _shape(entry, model)
    if shape:
        return (
            [LayerGroup("embed", ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"))]
            + [LayerGroup(f"block{i}", (f"blocks.{i}",)) for i in range(shape[1])]
            + [LayerGroup("neck", ("norm", "fc_norm", "attn_pool")), LayerGroup("head", ("head",))]
        )


@hookimpl
def backbone_cam_target(entry, model):
    """Grad-CAM on a ViT, as grad-cam's guide does it: the last block's first LayerNorm,
    its patch tokens (class and register tokens dropped) laid out on the patch grid."""
    if model is not None:
        return CamTarget(f"blocks.{len(model.blocks) - 1}.norm1", prefix_tokens=model.num_prefix_tokens)


@hookimpl
def backbone_normalization(entry, model):
    if model is not None:
        return _timm.normalization(model)
    if entry.upstream in KNOWN and entry.weights and entry.weights.startswith("augreg"):
        return AUGREG
    return None


@hookimpl
def backbone_source(entry):
    return _timm.source(entry)
