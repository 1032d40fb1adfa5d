"""The science, as pure functions: normalisation, valence fits, relaxation, dose, damage, RIXS.

Nothing here knows about sockets or the run store; the monitor calls these on each aligned
spectrum, and ``operando fit`` calls exactly the same functions on scan files.
"""

from operando.analysis.lcf import FitResult, fit_spectrum
from operando.analysis.references import References

__all__ = ["FitResult", "References", "fit_spectrum"]
