"""The harness's output that says nothing to a user of a diffusion run: its own progress bars
(the classifier shows one bar per run instead, :mod:`diffcls_plugin.classifier.progress`) and
warnings that its libraries raise about its choices, or raise twice."""

from __future__ import annotations

import contextlib
import re
import warnings

# the start of each message: warnings raised by the harness's dataset and loader code
IGNORED_WARNINGS = (
    # the harness builds its webdatasets without shardshuffle, which already reads the shards in
    # order; the user cannot set it, and every run (every cell of diffcls run) printed it again
    r"WebDataset\(shardshuffle=\.\.\.\) is None",
)
ONCE_WARNINGS = (
    # torch warns when the loader is made and again when it is first iterated, and again in each
    # run of a process: once is enough (it still says that --num_workers exceeds the CPUs)
    r"This DataLoader will create \d+ worker processes",
    # the harness's verbose classification report raises sklearn's UndefinedMetricWarning three
    # times with the same text (per class, macro and weighted averages), in each run
    r"(Precision|Recall|F-score) is ill-defined",
)


class ShowOnce:
    """A ``warnings.showwarning`` that shows the first warning matching each of ``patterns`` and
    drops the later ones, for the rest of the process; every other warning goes to ``show``.

    Python's own ``once`` action cannot do this: its record is cleared whenever any code changes
    the warning filters (``warnings.catch_warnings()`` does, and libraries call it while a run
    loads and scores).
    """

    def __init__(self, show, patterns: tuple[str, ...]) -> None:
        self.show, self.patterns = show, [re.compile(p) for p in patterns]
        self.shown: set[str] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)
        for pattern in self.patterns:
            if pattern.match(text):
                if pattern.pattern in self.shown:
                    return None
                self.shown.add(pattern.pattern)
                break
        return self.show(message, category, filename, lineno, file, line)


def filter_warnings() -> None:
    """Ignore :data:`IGNORED_WARNINGS` and show each of :data:`ONCE_WARNINGS` once per process
    (idempotent: a filter already there is not added again, as that would reset which other
    warnings were already shown)."""
    for message in IGNORED_WARNINGS:
        if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == message for f in warnings.filters):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
    if not isinstance(warnings.showwarning, ShowOnce):
        warnings.showwarning = ShowOnce(warnings.showwarning, ONCE_WARNINGS)


def no_bar(iterable=None, *args, **kwargs):
    """A stand-in for ``tqdm(iterable, ...)`` that draws nothing: ``iterable`` itself."""
    return iterable


@contextlib.contextmanager
def without_bars(module):
    """``module.tqdm`` (the harness's ``from tqdm import tqdm``) draws nothing inside the block:
    for a diffusion run, the harness's bars over the classes and over the loader's batches (a
    batch takes minutes, so they read ``1it [03:12, 192.11s/it]``) would nest with the
    classifier's own."""
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return
    module.tqdm = no_bar
    try:
        yield
    finally:
        module.tqdm = original
