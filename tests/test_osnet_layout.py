"""The builders reproduce torchreid's state-dict layout exactly (names, order, shapes, counts)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import ARCHITECTURES, OSNet, build_osnet, infer_architecture
from model.osnet import osnet_ibn_x1_0, osnet_x0_5, osnet_x0_25, osnet_x0_75, osnet_x1_0

# Real torchreid-layout checkpoints in ../shared/weights and the architecture that wrote them.
REAL_FILES = {"osnet_x0_25_msmt17.pth": "osnet_x0_25", "osnet_ibn_x1_0_random.pth": "osnet_ibn_x1_0"}
# Stem width of each variant, from the paper's width multipliers (x1.0 = 64).
STEM_WIDTH = {"osnet_x1_0": 64, "osnet_x0_75": 48, "osnet_x0_5": 32, "osnet_x0_25": 16, "osnet_ibn_x1_0": 64}
IN_KEYS = ["conv2.0.IN.weight", "conv2.0.IN.bias", "conv2.1.IN.weight", "conv2.1.IN.bias"]


@pytest.mark.parametrize("file_name", list(REAL_FILES))
def test_layout_equals_real_checkpoint(file_name, shared_weights_dir: Path):
    state = torch.load(shared_weights_dir / file_name, map_location="cpu", weights_only=True)
    arch = REAL_FILES[file_name]
    ours = build_osnet(arch, num_classes=state["classifier.weight"].shape[0]).state_dict()
    assert list(ours) == list(state)  # same names, same order, same count
    mismatched = {k: (tuple(ours[k].shape), tuple(v.shape)) for k, v in state.items() if ours[k].shape != v.shape}
    assert not mismatched
    assert all(ours[k].dtype == v.dtype for k, v in state.items())
    assert infer_architecture(state) == arch


def test_tensor_counts_match_sources_md():
    """SOURCES.md: 567 tensors for the plain variants, 568 for IBN (4 IN tensors, stem IN has 2 instead of 5)."""
    counts = {name: len(build_osnet(name).state_dict()) for name in ARCHITECTURES}
    assert counts == {"osnet_ibn_x1_0": 568, "osnet_x1_0": 567, "osnet_x0_75": 567, "osnet_x0_5": 567, "osnet_x0_25": 567}


def test_plain_variants_share_one_layout_and_scale_widths():
    reference = build_osnet("osnet_x1_0").state_dict()
    for name in ("osnet_x0_75", "osnet_x0_5", "osnet_x0_25"):
        state = build_osnet(name).state_dict()
        assert list(state) == list(reference)
        ratio = STEM_WIDTH[name] / 64
        assert state["conv5.conv.weight"].shape[0] == int(512 * ratio)
        assert state["fc.0.weight"].shape == (512, int(512 * ratio))


def test_ibn_layout_is_x1_0_plus_instance_norm():
    plain, ibn = build_osnet("osnet_x1_0").state_dict(), build_osnet("osnet_ibn_x1_0").state_dict()
    stem_stats = {"conv1.bn.running_mean", "conv1.bn.running_var", "conv1.bn.num_batches_tracked"}
    assert set(ibn) - set(plain) == set(IN_KEYS)
    assert set(plain) - set(ibn) == stem_stats
    assert isinstance(build_osnet("osnet_ibn_x1_0").conv1.bn, torch.nn.InstanceNorm2d)
    assert all(ibn[k].shape == (256,) for k in IN_KEYS)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_builders(name):
    builder = {"osnet_ibn_x1_0": osnet_ibn_x1_0, "osnet_x1_0": osnet_x1_0, "osnet_x0_75": osnet_x0_75,
               "osnet_x0_5": osnet_x0_5, "osnet_x0_25": osnet_x0_25}[name]
    assert ARCHITECTURES[name] is builder
    model = build_osnet(name, num_classes=751)
    assert isinstance(model, OSNet) and model.arch == name
    assert model.state_dict()["conv1.conv.weight"].shape == (STEM_WIDTH[name], 3, 7, 7)
    assert model.classifier.out_features == 751
    assert infer_architecture(model.state_dict()) == name


def test_parameter_count_matches_the_paper():
    """Zhou et al. (ICCV 2019), Table: OSNet x1.0 has 2.2 M parameters (feature extractor)."""
    model = build_osnet("osnet_x1_0")
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier."))
    assert 2.1e6 < backbone < 2.3e6


def test_eval_returns_features_train_returns_logits_and_features():
    model = build_osnet("osnet_x0_25", num_classes=10)
    x = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        features = model(x)
    assert features.shape == (2, 512)
    assert torch.all(features >= 0)  # after the ReLU of fc
    model.train()
    logits, train_features = model(x)
    assert logits.shape == (2, 10) and train_features.shape == (2, 512)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown OSNet architecture 'osnet_x2_0'"):
        build_osnet("osnet_x2_0")
