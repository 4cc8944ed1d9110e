"""A run's progress on rank 0: one tqdm bar on a terminal, plain log lines anywhere else.

Both show the images done of the images the run will classify, UNet evaluations per second,
evaluations per image, the images read from the resume store and the time left. Off a terminal
(a log file, a pipe, CI) there are no escape codes and no carriage returns: one line after the
first batch, then at most one per ``$DIFFCLS_PROGRESS_INTERVAL`` seconds (60 by default) and one
when the last image is done::

    diffusion-hier: 128/10000 images in 0:00:39, 210.3 UNet evals/s, 64.0 evals/img, 12 from store, ETA 0:55:19
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from diffcls_plugin import distributed
from diffcls_plugin.classifier.stats import RunStats
from diffcls_plugin.errors import DiffclsError

INTERVAL_ENV = "DIFFCLS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 60.0


def log_interval(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between two progress lines off a terminal: ``$DIFFCLS_PROGRESS_INTERVAL``, else 60.

    Raises:
        DiffclsError: the variable is not a number of seconds >= 0.
    """
    raw = environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also refuses nan
        raise DiffclsError(f"{INTERVAL_ENV}={raw!r} must be a number of seconds >= 0 (0: a line per batch); unset it for a line a minute")
    return value


def clock_text(seconds: float) -> str:
    """``H:MM:SS`` (``0:02:05``; past a day, ``1 day, 2:03:04``)."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def terminal_size(stream) -> tuple[int, int]:
    """(columns, lines) of the terminal ``stream`` writes to; 0 for each it has none of or reports none of."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def eta_seconds(n_done: int, total: int | None, stats: RunStats, elapsed: float) -> float | None:
    """Seconds left if each remaining image takes the wall time the computed ones took so far
    (while every image so far came from the store, the time those took); ``None`` without a total
    or before the first image. Lower is sooner."""
    if total is None or n_done <= 0:
        return None
    basis = stats.n_images_computed if stats.n_images_computed > 0 else n_done
    return max(total - n_done, 0) * elapsed / basis


def progress_details(n_done: int, total: int | None, stats: RunStats, with_store: bool, elapsed: float) -> list[str]:
    """The parts after the image count: UNet evaluations per second (computed ones), evaluations
    per image (as spent), images from the store (when the store is on) and, last, the ETA (while
    images remain and a total is known)."""
    parts = []
    if stats.n_unet_evals_computed > 0:
        parts.append(f"{stats.n_unet_evals_computed / max(stats.seconds_computed, 1e-9):.1f} UNet evals/s")
    if stats.n_images > 0:
        parts.append(f"{stats.n_unet_evals / stats.n_images:.1f} evals/img")
    if with_store:
        parts.append(f"{stats.n_images - stats.n_images_computed} from store")
    eta = eta_seconds(n_done, total, stats, elapsed)
    if eta is not None and n_done < total:
        parts.append(f"ETA {clock_text(eta)}")
    return parts


class ProgressBar:
    """Rank 0's progress display for one run (see the module docstring); nothing on other ranks.

    The clock starts when the bar is made (the classifier makes it when the classes are prepared,
    just before the first batch loads), so the first batch's ETA includes loading it.

    Args:
        description: the prefix, the harness model name (``diffusion-hier``).
        total: images the run will classify (the dataset or subset size); ``None``: unknown, no ETA.
        enabled: ``False`` shows nothing.
        stream: where to write (default: ``sys.stderr`` when the bar is made); a tqdm bar if it is
            a terminal (``isatty()``), log lines if not.
        interval_s: least seconds between two log lines after the first (default:
            :func:`log_interval`); unused on a terminal.
        clock: monotonic seconds (tests pass a fake clock).
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        enabled: bool = True,
        *,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.clock = description, total, clock
        self.enabled = enabled and distributed.world()[0] == 0
        self.n_done = 0
        self.is_bar = False  # a tqdm bar (a terminal) rather than log lines
        self._bar = None
        self._last_line: float | None = None  # when the last log line was written
        self._logged = 0  # images done at the last log line
        self._text = ""  # the latest log line
        if not self.enabled:
            return
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = log_interval() if interval_s is None else float(interval_s)
        self.start = clock()
        self.is_bar = bool(getattr(self.stream, "isatty", lambda: False)())
        if self.is_bar:
            from tqdm import tqdm

            counted = "{n_fmt}/{total_fmt} images" if total is not None else "{n_fmt} images"
            bar = "{percentage:3.0f}%|{bar}| " if total is not None else ""
            columns, lines = terminal_size(self.stream)
            self._bar = tqdm(
                total=total,
                desc=description,
                file=self.stream,
                bar_format="{desc}: " + bar + counted + " [{elapsed}{postfix}]",
                mininterval=0,
                leave=True,
                # follow the terminal's size; on a pseudo-terminal that reports none (some CI runners,
                # `script`), tqdm would draw nothing: 20 lines and its width (or 120 columns) instead
                **({"dynamic_ncols": True} if min(columns, lines) > 0 else {"ncols": columns or 120, "nrows": 20}),
            )

    def update(self, n_images: int, stats: RunStats, with_store: bool) -> None:
        """Count a finished batch of ``n_images`` images; ``stats`` are the run's counters so far."""
        if not self.enabled:
            return
        self.n_done += n_images
        now = self.clock()
        details = progress_details(self.n_done, self.total, stats, with_store, now - self.start)
        finished = self.total is not None and self.n_done >= self.total
        if self.is_bar:
            if self._bar is not None:  # closed once the last image is done
                if details and details[-1].startswith("ETA "):  # first on the bar, where a narrow terminal does not cut it off
                    details = details[-1:] + details[:-1]
                self._bar.set_postfix_str(", ".join(details), refresh=False)
                self._bar.update(n_images)
                if finished:
                    self.close()
            return
        counted = f"{self.n_done}/{self.total}" if self.total is not None else f"{self.n_done}"
        self._text = ", ".join([f"{self.description}: {counted} images in {clock_text(now - self.start)}", *details])
        if self._last_line is None or finished or now - self._last_line >= self.interval_s:
            self._write()
            self._last_line = now

    def _write(self) -> None:
        print(self._text, file=self.stream, flush=True)
        self._logged = self.n_done

    def close(self) -> None:
        """End the display: the bar stays drawn; off a terminal, the latest state is logged if it was not."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and not self.is_bar and self.n_done > self._logged:
            self._write()
