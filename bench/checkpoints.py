"""Which weights a benchmark measures: ``--models`` names, ``--arch``/``--weights``, fallbacks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from testkit.reference import CHECKPOINTS, checkpoint_path

BENCH_ARCH = "osnet_ibn_x1_0"
#: ``--models`` names: (arch, checkpoint stem in ../shared/weights, or None for the bundled file).
#: The default runs the weights users get by default (model zoo, denormal-laden), the trained x1.0
#: stand-in and the product's x1.0 IBN architecture, each measured side by side in one invocation.
MODELS = {
    "x0_25_msmt17": ("osnet_x0_25", None),
    "x1_0_market": ("osnet_x1_0", "osnet_x1_0_market1501_from_int8"),
    "ibn_x1_0": ("osnet_ibn_x1_0", "osnet_ibn_x1_0_random"),
}
DEFAULT_MODELS = list(MODELS)
assert all(stem is None or CHECKPOINTS[stem] == arch for arch, stem in MODELS.values())


def _shared_stem(arch: str) -> Optional[str]:
    """The shared checkpoint ``--models`` uses for ``arch``, if any."""
    return next((stem for a, stem in MODELS.values() if a == arch and stem), None)


def bench_weights(shared: Optional[Path], arch: str, requested: Optional[str], workdir: Path) -> tuple[str, str]:
    """(path, description) of the weights: --weights, the shared file, the bundled x0_25, or random."""
    if requested:
        return requested, f"--weights {requested}"
    if arch == "osnet_x0_25":
        from weights import BUNDLED_WEIGHTS

        return BUNDLED_WEIGHTS, "bundled osnet_x0_25 MSMT17 weights"
    stem = _shared_stem(arch)
    if shared is not None and stem and checkpoint_path(shared, stem).is_file():
        path = checkpoint_path(shared, stem)
        return str(path), f"shared {path}"
    import torch

    from model.osnet import build_osnet

    torch.manual_seed(0)
    path = workdir / f"{arch}_random_init.pth"
    torch.save(build_osnet(arch).state_dict(), path)
    return str(path), f"{arch} with random initialisation (seed 0), saved to a temporary file"



def bench_models(models: Optional[Sequence[str]], arch: str, weights: Optional[str], shared: Optional[Path],
                 workdir: Path) -> list[tuple[str, str, str, str]]:
    """(name, arch, weights path, description) of each model to measure: ``models`` (names of
    :data:`MODELS`), or, if None, the one model ``arch``/``weights`` name."""
    if models is None:
        path, source = bench_weights(shared, arch, weights, workdir)
        name = "x0_25_msmt17" if arch == "osnet_x0_25" and not weights else arch  # the bundled weights
        return [(name, arch, path, source)]
    chosen = []
    for name in models:
        arch, stem = MODELS[name]
        if stem is not None and shared is not None and checkpoint_path(shared, stem).is_file():
            path, source = str(checkpoint_path(shared, stem)), f"shared {checkpoint_path(shared, stem)}"
        else:
            path, source = bench_weights(shared, arch, None, workdir)
        chosen.append((name, arch, path, source))
    return chosen
