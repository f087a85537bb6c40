"""The seeded train/test split and the cross-validation folds (scikit-learn)."""

from __future__ import annotations

import math

from nanoseg.errors import NanosegError


def split_samples(stems: list[str], test_fraction: float, folds: int, seed: int) -> dict:
    """Seeded train/test split and K folds over the training stems.

    Returns
    -------
    dict
        ``{"train": [...], "test": [...], "folds": [{"train": [...], "val": [...]}, ...]}``
    """
    from sklearn.model_selection import KFold, train_test_split

    stems = sorted(stems)
    n_test = max(1, math.ceil(test_fraction * len(stems))) if test_fraction > 0 else 0
    if len(stems) - n_test < max(2, folds):
        raise NanosegError(
            f"only {len(stems)} images: too few for a {test_fraction:.0%} test split and {folds} folds; "
            "add images or lower prepare.folds in params.yaml."
        )
    if n_test:
        train, test = train_test_split(stems, test_size=n_test, random_state=seed, shuffle=True)
    else:
        train, test = list(stems), []
    train, test = sorted(train), sorted(test)
    kf = KFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_list = [
        {"train": [train[i] for i in tr], "val": [train[i] for i in va]} for tr, va in kf.split(train)
    ]
    return {"seed": seed, "train": train, "test": test, "folds": fold_list}
