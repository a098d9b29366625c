"""The library's one progress bar: :data:`tqdm`.

It is ``tqdm.autonotebook.tqdm`` (a widget in Jupyter, text on a terminal), imported
without tqdm's experimental-feature warning, and *not* ``tqdm.auto.tqdm``: that class
mixes in ``tqdm.asyncio``, whose constructor calls ``iter(iterable)`` once more than the
loop does. On a :class:`~torch.utils.data.DataLoader` every ``iter()`` draws its base
seed from the global torch generator (and, with ``num_workers > 0``, starts workers), so
that extra call shifted every dropout mask of the epoch: a run with progress bars on
trained differently from the same run with them off. With this class a bar never changes
what is computed (``tests/utils/test_progress.py``).
"""
from __future__ import annotations

import warnings

try:  # tqdm is a hard dependency; keep the library importable without it anyway
    from tqdm.std import TqdmExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = ["tqdm"]
