"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_data_dir(arg=None, *, need=("mnist",)) -> Path | None:
    """The folder that holds the IDX datasets, or ``None``.

    Candidates in order: ``arg`` (a ``--data-dir`` option), ``$JAXBOUND_DATA_DIR``,
    then ``../shared/data`` beside the repository; the first one with any of the
    sub-folders in ``need`` (``"mnist"``, ``"fashion-mnist"``) wins.
    """
    cands = [Path(arg)] if arg else []
    if os.environ.get("JAXBOUND_DATA_DIR"):
        cands.append(Path(os.environ["JAXBOUND_DATA_DIR"]))
    cands.append(REPO.parent / "shared" / "data")
    for c in cands:
        if any((c / n).is_dir() for n in need):
            return c
    return None


def load_mnist_or_none(arg=None):
    """``(train, test)`` MNIST datasets from :func:`find_data_dir`, or ``None`` after printing why they are skipped."""
    from jaxbound import data

    root = find_data_dir(arg)
    if root is None:
        print("MNIST IDX files not found (set JAXBOUND_DATA_DIR or place them in ../shared/data); skipping")
        return None
    return data.load("mnist", split="train", data_dir=root), data.load("mnist", split="test", data_dir=root)

def require_data_dir(arg=None, *, need=("mnist",)) -> Path:
    """:func:`find_data_dir`, or exit with a clear message (the benchmark is skipped)."""
    path = find_data_dir(arg, need=need)
    if path is None:
        sys.exit(f"{' / '.join(need)} IDX files not found: set JAXBOUND_DATA_DIR, or place them in ../shared/data "
                 "(skipping the benchmark)")
    return path


def torch_lenet5(weights: dict):
    """PyTorch copy of jaxbound's LeNet5 from its Flax weights (``"<layer>_kernel"``, ``"<layer>_bias"``).

    ``torch.nn.Sequential`` (conv5x5 - ReLU - maxpool2, twice, then fc -
    ReLU - fc) in eval mode with frozen parameters; it takes NCHW images.
    Flax kernels are HWIO and flatten NHWC, so the convolutions are permuted
    and the rows of ``fc1`` reordered once (the layout of ``attacks.py``).
    """
    import torch

    z = weights
    c1, c2 = z["conv1_kernel"].shape[-1], z["conv2_kernel"].shape[-1]
    hid, k = z["fc1_kernel"].shape[-1], z["fc2_kernel"].shape[-1]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(z["conv1_kernel"].shape[2], c1, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(c1, c2, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(7 * 7 * c2, hid), torch.nn.ReLU(), torch.nn.Linear(hid, k),
    ).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(z["conv1_kernel"]).permute(3, 2, 0, 1))
        net[0].bias.copy_(torch.tensor(z["conv1_bias"]))
        net[3].weight.copy_(torch.tensor(z["conv2_kernel"]).permute(3, 2, 0, 1))
        net[3].bias.copy_(torch.tensor(z["conv2_bias"]))
        w3 = z["fc1_kernel"].reshape(7, 7, c2, hid).transpose(2, 0, 1, 3).reshape(-1, hid)
        net[7].weight.copy_(torch.tensor(w3).T)
        net[7].bias.copy_(torch.tensor(z["fc1_bias"]))
        net[9].weight.copy_(torch.tensor(z["fc2_kernel"]).T)
        net[9].bias.copy_(torch.tensor(z["fc2_bias"]))
    for p in net.parameters():
        p.requires_grad_(False)
    return net
