"""Our ResNet50 has torchvision's parameter names and shapes, and loads checkpoints safely."""

from __future__ import annotations

import pytest
import torch

from conftest_models import no_builtin_modules, single_torch_thread  # noqa: F401  (fixtures)

from mimir.errors import ModuleError
from mimir.models.resnet import (
    ResNet50,
    architecture_of,
    build_from_state_dict,
    feature_dim,
    load_checkpoint,
    mean_variance_resnet50,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")



def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def torchvision_resnet50_layout(num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision.models.resnet50().state_dict() keys and shapes, written out by hand."""
    keys: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]
    inplanes = 64
    for li, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            cin = inplanes if b == 0 else planes * 4
            keys += [(f"{p}.conv1.weight", (planes, cin, 1, 1)), *_bn(f"{p}.bn1", planes)]
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            keys += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1)), *_bn(f"{p}.bn3", planes * 4)]
            if b == 0:
                keys += [(f"{p}.downsample.0.weight", (planes * 4, cin, 1, 1)), *_bn(f"{p}.downsample.1", planes * 4)]
        inplanes = planes * 4
    keys += [("fc.weight", (num_classes, 2048)), ("fc.bias", (num_classes,))]
    return keys


def test_state_dict_matches_torchvision_layout() -> None:
    net = ResNet50()
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == torchvision_resnet50_layout()
    assert len(got) == 320  # 161 parameters + 159 BatchNorm buffers
    assert len(list(net.parameters())) == 161
    assert sum(p.numel() for p in net.parameters()) == 25_557_032


def test_mean_variance_head_parameter_count() -> None:
    t = 5
    net = mean_variance_resnet50(t)
    backbone = 25_557_032 - (2048 * 1000 + 1000)
    assert sum(p.numel() for p in net.parameters()) == backbone + 2048 * 2 * t + 2 * t
    assert tuple(net.fc.weight.shape) == (2 * t, 2048)


@pytest.mark.parametrize("width", [8, 16])
def test_slim_width_scales_every_layer(width: int) -> None:
    net = mean_variance_resnet50(3, width=width).eval()
    sd = net.state_dict()
    ratio = width / 64
    for (k, shape), (k2, v) in zip(torchvision_resnet50_layout(6), sd.items()):
        assert k == k2
        if k.startswith("conv1"):
            assert v.shape[0] == width and v.shape[1] == 3
        elif k == "fc.weight":
            assert tuple(v.shape) == (6, feature_dim(width)) == (6, int(2048 * ratio))
        elif v.ndim >= 1 and k != "fc.bias":
            assert v.shape[0] == int(shape[0] * ratio)
    assert architecture_of(sd) == (width, 6)
    with torch.inference_mode():
        out = net(torch.rand(2, 3, 256, 256) * 255)
    assert out.shape == (2, 6)


def test_snapshot_checkpoint_loads_strictly(tmp_path) -> None:
    src = mean_variance_resnet50(2, width=8)
    with torch.no_grad():
        src.bn1.running_mean.normal_()
    path = tmp_path / "snapshot.pth.tar"
    torch.save({"epoch": 3, "state_dict": src.state_dict(), "optimizer": {"lr": 0.1}}, path)
    sd = load_checkpoint(path)
    net = build_from_state_dict(sd)
    for k, v in src.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    # a bare state dict and a DataParallel ("module.") one load too
    torch.save(src.state_dict(), tmp_path / "bare.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "dp.pt")
    assert set(load_checkpoint(tmp_path / "bare.pt")) == set(sd)
    assert set(load_checkpoint(tmp_path / "dp.pt")) == set(sd)


class _Payload:
    """An arbitrary object: unpickling it would mean running code from the file."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": ResNet50(4, width=8).state_dict(), "x": _Payload()}, path)
    with pytest.raises(ModuleError, match="evil.pth.tar: cannot read torch checkpoint safely"):
        load_checkpoint(path)


def test_not_a_resnet_is_refused(tmp_path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "x.pt")
    with pytest.raises(ModuleError, match="not a ResNet50"):
        build_from_state_dict(load_checkpoint(tmp_path / "x.pt"))
    sd = ResNet50(4, width=8).state_dict()
    del sd["layer2.0.conv1.weight"]
    with pytest.raises(ModuleError, match="do not match a ResNet50"):
        build_from_state_dict(sd)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModuleError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
