"""Energy per request on GPUs: the card's NVML energy counter, split over each step's tokens.

NVML counts the millijoules the whole card used since the driver loaded. The engine reads the counter after
every step and charges what was used since the last reading to the step's requests in proportion to the tokens
each ran (a 500-token prompt chunk costs more than one decode token). Energy used while the engine was idle is
nobody's: the first step after an idle spell only resets the baseline. The figure includes the card's idle
draw during the run, as a meter on the card's supply would.

Grams of CO2 follow from a grid intensity the user sets (`LLAMARUN_GRID_G_PER_KWH`); the default is the 2023
world average, 480 gCO2/kWh (Ember, Global Electricity Review 2024).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server imports this module for its fields; torch comes with the first model
    import torch

DEFAULT_GRID_G_PER_KWH = 480.0  # Ember, Global Electricity Review 2024: the world's 2023 average
JOULES_PER_KWH = 3.6e6


class EnergyMeter:
    """Joules the GPU used between calls to `delta()`.

    An NVML read takes milliseconds, as long as a whole decode step, so on a GPU a background thread samples
    the counter every `interval` seconds and `delta()` extrapolates from the last sample at the last measured
    power: a step pays a clock read, not an NVML call. Over a run the charges add up to what the card counted;
    a request that ends between samples is charged at the power last measured. `interval=None` reads the
    counter on every call (tests).
    """

    def __init__(self, read: Callable[[], float], interval: float | None = 0.05) -> None:
        self._read = read
        self._sample = (time.perf_counter(), read(), 0.0)  # (when, joules, watts since the sample before)
        self._interval = interval
        if interval is not None:
            threading.Thread(target=_sample_forever, args=(weakref.ref(self), interval), daemon=True,
                             name="llamarun-energy").start()
        self._last = self.joules()

    @classmethod
    def for_device(cls, device: str | torch.device) -> EnergyMeter | None:
        """A meter for a CUDA device, or None (CPU, no `nvidia-ml-py`, or a card without an energy counter)."""
        import torch

        device = torch.device(device)
        if device.type != "cuda":
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # noqa: E731 (mJ -> J)
            read()
            return cls(read)
        except Exception:  # no NVML library, or a card that does not count energy
            return None

    def joules(self) -> float:
        """The card's counter now: read, or extrapolated from the last background sample."""
        if self._interval is None:
            return self._read()
        when, joules, watts = self._sample
        # Extrapolate at most two intervals ahead: a late sample must not run the estimate away.
        return joules + watts * min(time.perf_counter() - when, 2 * self._interval)

    def _take_sample(self) -> None:
        when, joules, _ = self._sample
        now, read = time.perf_counter(), self._read()
        self._sample = (now, read, max(read - joules, 0.0) / max(now - when, 1e-9))

    def delta(self) -> float:
        """Joules used since the last call (or since the meter was made).

        The charged total only moves forward: when a new sample shows the extrapolation ran ahead, nothing is
        charged until the counter has caught up, so no joule is charged twice.
        """
        now = self.joules()
        if now <= self._last:
            return 0.0
        used, self._last = now - self._last, now
        return used


def _sample_forever(meter_ref: weakref.ref[EnergyMeter], interval: float) -> None:
    """Sample the counter until the meter is gone (the thread holds no strong reference to it)."""
    while True:
        time.sleep(interval)
        meter = meter_ref()
        if meter is None:
            return
        try:
            meter._take_sample()
        except Exception:  # the driver went away: keep extrapolating from the last sample
            return
        del meter


def grid_intensity() -> float:
    """gCO2 per kWh: LLAMARUN_GRID_G_PER_KWH, or the 2023 world average."""
    try:
        return float(os.environ.get("LLAMARUN_GRID_G_PER_KWH", DEFAULT_GRID_G_PER_KWH))
    except ValueError:
        return DEFAULT_GRID_G_PER_KWH


def co2_grams(joules: float, g_per_kwh: float | None = None) -> float:
    """Grams of CO2 for `joules` at the grid intensity (default: grid_intensity())."""
    return joules / JOULES_PER_KWH * (grid_intensity() if g_per_kwh is None else g_per_kwh)


def energy_fields(joules: float | None) -> dict[str, float]:
    """The energy fields the APIs add to a finished request's stats (nothing when the GPU is not metered)."""
    if joules is None:
        return {}
    return {"energy_joules": round(joules, 4), "co2_grams": round(co2_grams(joules), 6)}
