"""Shared set-ups of the speed benchmarks: the default model and a vit_small at 224, with images and SAEs.

Everything runs on CUDA when it is available, else on the CPU; ``CAFE_BENCH_DEVICE=cpu`` (or ``cuda:1``...)
chooses. Timed calls go through :func:`synchronized`, so that a GPU's queued kernels are counted.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext, TargetFunction


DEVICE = torch.device(os.environ.get("CAFE_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def synchronized(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, returning only once the device has finished the work it queued."""
    if DEVICE.type != "cuda":
        return fn

    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(DEVICE)
        return out

    return call


@dataclass
class Setup:
    """A backbone, an SAE at one layer, images and a target per image."""

    name: str
    backbone: Any
    sae: Any
    layer: int
    images: torch.Tensor

    def target(self, n: int) -> tuple[TargetFunction, torch.Tensor]:
        """The first ``n`` images, each explained at its most active (latent, patch token)."""
        x = self.images[:n]
        with torch.no_grad():
            codes = self.sae.encode(self.backbone.forward_to(x, self.layer))
        n_prefix = len(self.backbone.prefix_tokens)
        best = codes[:, n_prefix:].flatten(1).argmax(1)
        positions = best // codes.shape[-1] + n_prefix
        latents = best % codes.shape[-1]
        return TargetFunction(self.backbone, self.sae, self.layer, latents, positions), x


@pytest.fixture(scope="session")
def host() -> PluginHost:
    return PluginHost()


def _toy(host: PluginHost) -> Setup:
    from cafe_shapes import ShapesDataset

    backbone = host.registry("backbone").get("toy_vit").build({})
    sae = host.registry("sae").get("toy_sae").build({"layer": 3})
    images, _, _ = ShapesDataset(32, seed=4).tensors()
    return Setup("toy", backbone.to(device=DEVICE), sae.to(device=DEVICE), 3,
                 backbone.preprocess(list(images)).to(DEVICE))


def _vit_small(host: PluginHost) -> Setup:
    torch.manual_seed(0)
    backbone = host.registry("backbone").get("timm").build({"model": "vit_small_patch16_224"})
    sae = host.registry("sae").get("random").build({"d_in": 384, "d_sae": 3072, "layer": 6, "seed": 0})
    images = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return Setup("vit_small", backbone.to(device=DEVICE), sae.to(device=DEVICE), 6, images.to(DEVICE))


@pytest.fixture(scope="session")
def setups(host) -> dict[str, Setup]:
    return {"toy": _toy(host), "vit_small": _vit_small(host)}


def context(batch_size: int, autocast: torch.dtype | None = None) -> RunContext:
    return RunContext(batch_size=batch_size, device=DEVICE, autocast=autocast)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak extra memory of one call: CUDA's allocator peak on a GPU, sampled resident memory on a CPU."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - start
    baseline, peak, running = _rss_bytes(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        running[0] = False
        sampler.join()
    return max(0, peak[0] - baseline)
