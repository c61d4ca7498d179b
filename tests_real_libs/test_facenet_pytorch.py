"""facenet-pytorch 2.6.0's own InceptionResnetV1 against facekd's, both ways.

facenet-pytorch's package ``__init__`` imports MTCNN, which needs torchvision; the network module
(``models/inception_resnet_v1.py``) is loaded by file path under a bare package stub instead.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from facekd.encoders import load_encoder  # noqa: E402
from test_onnx_model import fitted_erasure  # noqa: E402  (tests/, seeded ESC fit)

TOL = 1e-6


def _facenet_module():
    name = "facenet_pytorch.models.inception_resnet_v1"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-pytorch is not installed (ci/real_libs.sh installs 2.6.0 --no-deps)")
    root = Path(list(spec.submodule_search_locations)[0])
    for package, path in (("facenet_pytorch", root), ("facenet_pytorch.models", root / "models")):
        if package not in sys.modules:  # stubs: their __init__ would import torchvision
            stub = types.ModuleType(package)
            stub.__path__ = [str(path)]
            sys.modules[package] = stub
    file_spec = importlib.util.spec_from_file_location(name, root / "models" / "inception_resnet_v1.py")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    file_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def facenet_net():
    """facenet-pytorch's InceptionResnetV1 with seeded random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    net = _facenet_module().InceptionResnetV1(pretrained=None).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net


def _chips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 160, 160, 3), dtype=np.uint8)


def _facenet_embed(net, chips: np.ndarray) -> np.ndarray:
    """facenet-pytorch's convention: fixed_image_standardization, (x - 127.5) / 128, RGB;
    forward L2-normalises."""
    x = torch.from_numpy((chips.astype(np.float32) - 127.5) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return net(x).numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_facenet_state_dict_loads_into_facekd_with_parity(facenet_net, tmp_path):
    path = tmp_path / "facenet_random.pt"
    torch.save(facenet_net.state_dict(), path)
    enc = load_encoder(f"facenet:{path}")
    x = _chips(4, 2)
    assert np.abs(_unit(enc.embed(x)) - _facenet_embed(facenet_net, x)).max() <= TOL


def test_facekd_edited_state_dict_loads_back_into_facenet_pytorch(facenet_net, tmp_path):
    path = tmp_path / "facenet_random.pt"
    torch.save(facenet_net.state_dict(), path)
    enc = load_encoder(f"facenet:{path}")
    erasure = fitted_erasure(enc)
    edited = enc.with_erasure(erasure)
    back = _facenet_module().InceptionResnetV1(pretrained=None).eval()
    back.load_state_dict(edited.state_dict(), strict=True)  # every key and shape as published
    x = _chips(4, 4)
    got = _facenet_embed(back, x)
    assert np.abs(got - _unit(edited.embed(x))).max() <= TOL
    assert np.abs(got - erasure.apply(_unit(enc.embed(x)))).max() <= TOL
