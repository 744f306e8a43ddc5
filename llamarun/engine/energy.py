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

import torch

DEFAULT_GRID_G_PER_KWH = 480.0  # Ember, Global Electricity Review 2024: the world's 2023 average
JOULES_PER_KWH = 3.6e6


class EnergyMeter:
    """Joules the GPU used between calls to `delta()`."""

    def __init__(self, handle: object, nvml: object) -> None:
        self._handle, self._nvml = handle, nvml
        self._last = self._read()

    @classmethod
    def for_device(cls, device: str | torch.device) -> EnergyMeter | None:
        """A meter for a CUDA device, or None (CPU, no `nvidia-ml-py`, or a card without an energy counter)."""
        device = torch.device(device)
        if device.type != "cuda":
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cls(pynvml.nvmlDeviceGetHandleByIndex(index), pynvml)
        except Exception:  # no NVML library, or a card that does not count energy
            return None

    def _read(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3  # mJ -> J

    def delta(self) -> float:
        """Joules used since the last call (or since the meter was made)."""
        now = self._read()
        used, self._last = max(now - self._last, 0.0), now
        return used


def grid_intensity() -> float:
    """gCO2 per kWh: LLAMARUN_GRID_G_PER_KWH, or the 2023 world average."""
    try:
        return float(os.environ.get("LLAMARUN_GRID_G_PER_KWH", DEFAULT_GRID_G_PER_KWH))
    except ValueError:
        return DEFAULT_GRID_G_PER_KWH


def co2_grams(joules: float, g_per_kwh: float | None = None) -> float:
    """Grams of CO2 for `joules` at the grid intensity (default: grid_intensity())."""
    return joules / JOULES_PER_KWH * (grid_intensity() if g_per_kwh is None else g_per_kwh)
