"""scikit-learn's bundled digits: 1797 grey 8x8 images of the digits 0-9, no download needed."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

N_CLASSES = 10
_SPLIT_SEED = 0  # the split is fixed: the same train/test samples on every machine


def digits_tensors(
    split: str = "train", *, image: bool = False, dtype: torch.dtype = torch.float32,
    test_fraction: float = 0.2, standardize: bool = True,
) -> tuple[Tensor, Tensor]:
    """The digits data set as `(inputs, targets)` tensors.

    Pixels are standardized with the training split's per-pixel mean and standard deviation.
    The split is fixed (a seeded permutation): 1438 training and 359 test samples by default.

    Args:
        split: "train", "test" or "all".
        image: shape inputs as (N, 1, 8, 8) images for CNNs instead of (N, 64) vectors.
        dtype: floating-point dtype of the inputs.
        test_fraction: fraction of samples held out as the test split.
        standardize: False gives the raw pixel values (integers 0 to 16) instead.

    Returns:
        inputs of shape (N, 64) or (N, 1, 8, 8), targets of shape (N,) with class indices (int64).
    """
    from sklearn.datasets import load_digits

    from ..errors import LandscapeError

    if split not in ("train", "test", "all"):
        raise LandscapeError(f"split must be 'train', 'test' or 'all'; got {split!r}.")
    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float64)
    y = torch.tensor(raw.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = int(round(test_fraction * len(x)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0).clamp_min(1e-3)  # constant border pixels: avoid dividing by zero
    if standardize:
        x = (x - mean) / std
    idx = {"train": train_idx, "test": test_idx, "all": torch.arange(len(x))}[split]
    x, y = x[idx].to(dtype), y[idx]
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return x, y


def digits_loaders(
    batch_size: int = 128, *, image: bool = False, dtype: torch.dtype = torch.float32,
    shuffle_train: bool = True, seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train and test `DataLoader`s over `digits_tensors` (the train loader shuffles, seeded)."""
    train = TensorDataset(*digits_tensors("train", image=image, dtype=dtype))
    test = TensorDataset(*digits_tensors("test", image=image, dtype=dtype))
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=shuffle_train, generator=gen),
        DataLoader(test, batch_size=batch_size, shuffle=False),
    )
