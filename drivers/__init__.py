"""Instrument drivers: each runs as its own process (``operando driver NAME``) and publishes the
wire protocol. Simulated and real drivers speak the same protocol; the monitor never knows which.
"""

from operando.drivers.base import Driver, DriverOptions
from operando.drivers.registry import DRIVERS, load_driver

__all__ = ["DRIVERS", "Driver", "DriverOptions", "load_driver"]
