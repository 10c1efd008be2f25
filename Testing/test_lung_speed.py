"""Issue 15 (lung-network speed): the faster inference paths compute what the plain ones compute.

Batch norm folded into the convolutions, the test-time flips in one stacked forward pass, the optional ONNX
Runtime backend with its fallback to torch, and the exact helpers of the lung clean-up.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from CovidCTLib.imaging.grid import bounding_box, occupied_box
from CovidCTLib.models.runtime import execution, fusion, inference, onnx_backend
from CovidCTLib.models.runtime.networks import attention_unet, unet
from CovidCTLib.models.runtime.registry import LoadedModel
from CovidCTLib.segmentation import postprocess
from Testing.required import require_module


def _trained_statistics(net: torch.nn.Module, channels: int, seed: int) -> torch.nn.Module:
    """``net`` with non-trivial batch-norm running statistics and affine parameters, in evaluation mode."""
    gen = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
        for _ in range(3):
            net(torch.rand(4, channels, 32, 32, generator=gen) * 2.0 - 0.5)
    return net.eval()


def _batchnorms(net: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize(
    ("build", "channels"),
    [
        (lambda: attention_unet(1, 2, (4, 8, 16, 32)), 1),
        (lambda: unet(2, 3, (4, 8, 16), num_res_units=1), 2),
        (
            lambda: torch.nn.Sequential(
                torch.nn.Conv2d(1, 6, 3, padding=1),
                torch.nn.BatchNorm2d(6),
                torch.nn.ReLU(),
                torch.nn.ConvTranspose2d(6, 4, 2, stride=2),
                torch.nn.BatchNorm2d(4),
            ),
            1,
        ),
    ],
)
def test_folded_network_computes_the_same_and_leaves_the_original_alone(build, channels) -> None:
    torch.manual_seed(0)
    net = _trained_statistics(build(), channels, seed=1)
    before = _batchnorms(net)
    folded, count = fusion.fold_batchnorm(net)
    x = torch.rand(3, channels, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, got = net(x), folded(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-5, rtol=1e-4)
    assert _batchnorms(net) == before  # the loaded module keeps its norms
    assert _batchnorms(folded) == before - count
    if before:  # every batch norm that follows a convolution is folded
        assert count > 0 and _batchnorms(folded) < before


def test_attention_unet_gates_and_blocks_are_all_folded() -> None:
    net = _trained_statistics(attention_unet(1, 2, (4, 8, 16, 32)), 1, seed=3)
    folded, count = fusion.fold_batchnorm(net)
    assert count == _batchnorms(net) and _batchnorms(folded) == 0


class _Asymmetric(torch.nn.Module):
    """A network whose output changes under flips (so a wrong un-flip shows)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.ramp = torch.nn.Parameter(torch.linspace(-2, 2, 16).repeat(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.ramp + self.ramp.T


def _per_flip_reference(net: torch.nn.Module, batch: torch.Tensor, flips: list[str]) -> torch.Tensor:
    total = torch.softmax(net(batch), dim=1)
    for f in flips:
        axes = inference.FLIP_AXES[f]
        total = total + torch.flip(torch.softmax(net(torch.flip(batch, axes)), dim=1), axes)
    return total / (1 + len(flips))


def test_flips_in_one_stacked_pass_equal_one_pass_per_flip() -> None:
    net = _Asymmetric().eval()
    batch = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    flips = ["h", "v", "hv"]
    with torch.inference_mode():
        stacked = inference._forward(net, batch, flips)
        reference = _per_flip_reference(net, batch, flips)
        plain = inference._forward(net, batch, [])
    np.testing.assert_allclose(stacked.numpy(), reference.numpy(), atol=1e-6)
    assert not torch.allclose(stacked, plain, atol=1e-3)  # the flips did change something


def test_predict_probs_batches_slices_with_their_flips() -> None:
    net = _Asymmetric().eval()
    manifest = {"input": {"size": 16}, "postprocess": {"test_time_flips": ["h", "v", "hv"]}, "architecture": {}}
    model = LoadedModel("toy", net, manifest)
    plan = execution.plan_for("cpu", "")
    n = plan.batch // 4 * 2 + 3  # two full batches of slices (with their 3 flips each) and a partial one
    x = list(np.random.default_rng(6).random((n, 1, 16, 16)).astype(np.float32))
    got = inference._predict_probs(model, x, [(16, 16)] * n)
    with torch.inference_mode():
        expected = _per_flip_reference(net, torch.from_numpy(np.stack(x)), manifest["postprocess"]["test_time_flips"])
    np.testing.assert_allclose(np.stack(got), expected.numpy(), atol=1e-6)


def test_cpu_plan_folds_and_batches() -> None:
    plan = execution.plan_for("cpu", "attention-unet")
    assert plan.fold_batchnorm and plan.batch == execution.CPU_BATCH
    cuda = execution.plan_for("cuda", "unet")
    assert not cuda.fold_batchnorm and not cuda.onnxruntime and cuda.batch == execution.CUDA_BATCH
    assert not execution.plan_for("cpu", "unet").onnxruntime  # measured no faster there


def _lung_like_model() -> LoadedModel:
    net = _trained_statistics(attention_unet(1, 2, (4, 8, 16, 32)), 1, seed=7)
    return LoadedModel("lung-toy", net, {"input": {"size": 32, "channels": 1}, "architecture": {}})


def test_onnx_runtime_switched_off_keeps_torch(monkeypatch) -> None:
    monkeypatch.setenv(onnx_backend.ENV_SWITCH, "0")
    assert not onnx_backend.onnxruntime_usable()
    assert not execution.plan_for("cpu", "attention-unet").onnxruntime


def test_failed_onnx_export_falls_back_to_the_folded_torch_network(monkeypatch, caplog) -> None:
    model = _lung_like_model()

    def broken(*_args):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_backend, "onnxruntime_usable", lambda: True)
    monkeypatch.setattr(onnx_backend, "export_onnx", broken)
    plan = execution.ExecutionPlan("cpu", True, False, False, fold_batchnorm=True, batch=8, onnxruntime=True)
    with caplog.at_level("WARNING"):
        runner = execution.network(model, plan)
    assert execution.backend_of(runner) == "torch" and "exporter exploded" in caplog.text
    assert _batchnorms(runner) == 0 and _batchnorms(model.module) > 0
    assert execution.network(model, plan) is runner  # decided once per module and plan


def test_onnx_runtime_network_matches_torch() -> None:
    require_module("onnxruntime")
    require_module("onnx")
    model = _lung_like_model()
    plan = execution.ExecutionPlan("cpu", True, False, False, fold_batchnorm=True, batch=8, onnxruntime=True)
    runner = execution.network(model, plan)
    assert execution.backend_of(runner) == "onnxruntime"
    x = list(np.random.default_rng(8).random((11, 1, 32, 32)).astype(np.float32))  # batch axis is dynamic
    torch_plan = execution.ExecutionPlan("cpu", False, False, False)
    with execution.running(torch_plan):
        expected = torch.softmax(model.module(torch.from_numpy(np.stack(x))), dim=1).numpy()
    with execution.running(plan):
        got = torch.softmax(runner(execution.to_batch(np.stack(x), plan)), dim=1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_one_key_sort_orders_values_like_the_two_key_lexsort() -> None:
    rng = np.random.default_rng(9)
    labels = rng.integers(1, 40, size=5000)
    for values in (
        rng.integers(-1024, 3071, size=5000).astype(np.int16),
        rng.integers(-32768, 32767, size=5000).astype(np.int16),
        rng.integers(0, 4000, size=5000).astype(np.uint16),
        rng.normal(-500, 300, size=5000).astype(np.float32),  # harmonised HU are float: the lexsort path
    ):
        expected = values[np.lexsort((values, labels))].astype(np.float64)
        np.testing.assert_array_equal(postprocess._sorted_by_component(labels, values), expected)


def test_bounding_box_is_find_objects_box() -> None:
    rng = np.random.default_rng(10)
    for _ in range(10):
        mask = np.zeros((7, 11, 13), bool)
        count = int(rng.integers(1, 5))
        mask[tuple(rng.integers(0, s, size=count) for s in mask.shape)] = True
        assert bounding_box(mask) == ndi.find_objects(mask.astype(np.uint8))[0]
        assert occupied_box(mask) == bounding_box(mask)
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None
    with pytest.raises(ValueError, match="empty"):
        occupied_box(np.zeros((3, 3, 3), bool))


def _onnx_probabilities(runner, size: int = 32) -> np.ndarray:
    x = np.random.default_rng(3).random((3, 1, size, size)).astype(np.float32)
    return torch.softmax(runner(torch.from_numpy(x)), dim=1).numpy()


def _torch_probabilities(module: torch.nn.Module, size: int = 32) -> np.ndarray:
    x = np.random.default_rng(3).random((3, 1, size, size)).astype(np.float32)
    with torch.inference_mode():
        return torch.softmax(module.eval()(torch.from_numpy(x)), dim=1).numpy()


def test_onnx_export_is_cached_on_disk_and_probed_before_use(monkeypatch, tmp_path, caplog) -> None:
    """The second process (here: a second module with the same weights) takes the cached file without
    exporting; a cached file that disagrees with the weights is exported again and replaced."""
    require_module("onnxruntime")
    require_module("onnx")
    from CovidCTLib.models.runtime import onnx_cache

    monkeypatch.setenv(onnx_cache.ENV_DIR, str(tmp_path))
    first = _lung_like_model().module
    runner = onnx_backend.onnx_network(first, 1, 32, weights_sha256="a" * 64)
    assert runner is not None
    (cached,) = list((tmp_path / "onnx").glob("*.onnx"))
    original = cached.read_bytes()

    exports = []
    real_export = onnx_backend.export_onnx
    monkeypatch.setattr(onnx_backend, "export_onnx", lambda *a: exports.append(a) or real_export(*a))
    second = copy.deepcopy(first)  # the same weights in another module
    again = onnx_backend.onnx_network(second, 1, 32, weights_sha256="a" * 64)
    assert exports == [] and again is not None
    np.testing.assert_allclose(_onnx_probabilities(again), _torch_probabilities(second), atol=1e-4)

    # other weights under the same key (a tampered or stale file): the probe refuses it
    other = _trained_statistics(attention_unet(1, 2, (4, 8, 16, 32)), 1, seed=99)
    cached.write_bytes(real_export(other, 1, 32))
    with caplog.at_level("WARNING"):
        fixed = onnx_backend.onnx_network(second, 1, 32, weights_sha256="a" * 64)
    assert len(exports) == 1 and "disagrees" in caplog.text
    np.testing.assert_allclose(_onnx_probabilities(fixed), _torch_probabilities(second), atol=1e-4)
    assert cached.read_bytes() == original  # the deterministic export of these weights again

    # damaged bytes: exported again as well
    cached.write_bytes(b"not an onnx model")
    assert onnx_backend.onnx_network(second, 1, 32, weights_sha256="a" * 64) is not None
    assert len(exports) == 2

    # new weights get a new key, never the old file
    assert onnx_cache.cache_key("b" * 64, 1, 32) != onnx_cache.cache_key("a" * 64, 1, 32)


def test_onnx_cache_switched_off_or_unwritable_still_runs(monkeypatch, tmp_path) -> None:
    require_module("onnxruntime")
    require_module("onnx")
    from CovidCTLib.models.runtime import onnx_cache

    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv(onnx_cache.ENV_DIR, str(blocked))
    module = _lung_like_model().module
    runner = onnx_backend.onnx_network(module, 1, 32, weights_sha256="c" * 64)
    np.testing.assert_allclose(_onnx_probabilities(runner), _torch_probabilities(module), atol=1e-4)
    monkeypatch.setenv(onnx_cache.ENV_SWITCH, "0")
    monkeypatch.setenv(onnx_cache.ENV_DIR, str(tmp_path / "off"))
    assert onnx_backend.onnx_network(module, 1, 32, weights_sha256="c" * 64) is not None
    assert not (tmp_path / "off").exists()


def test_slices_prepared_on_threads_equal_the_serial_preparation() -> None:
    """map_slices: the same inputs, in order, with every slice normalised once into the inferer's store."""
    from CovidCTLib.models.runtime.normalization import fit
    from CovidCTLib.models.runtime.slice_inferer import SliceInferer
    from CovidCTLib.phantom import make_phantom

    ct = make_phantom(shape=(12, 64, 64), lesions=True, seed=2).ct
    serial, threaded = SliceInferer(ct), SliceInferer(ct)
    zs = list(range(ct.shape[0]))[::-1]
    expected = [fit(serial.normalized(z), 48) for z in zs]
    calls: list[int] = []

    def prepare(z: int) -> np.ndarray:
        calls.append(z)
        return fit(threaded.normalized(z), 48)

    got = threaded.map_slices(prepare, zs, threads=2)
    assert sorted(calls) == sorted(zs) and len(got) == len(zs)
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    assert sorted(threaded._normalized) == sorted(zs)
    assert threaded.map_slices(lambda z: z * 2, zs, threads=1) == [z * 2 for z in zs]
