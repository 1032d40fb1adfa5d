"""Simulated instruments and the models behind them: a cell (``cell``, ``cycling``), its
spectra (``spectra``, ``sample``), and drivers that speak the real protocol
(``sim_potentiostat``, ``sim_spectrometer``, ``palmsens_sim``). The core never imports them at
run time (checked by import-linter); ``operando demo`` and the tests start them.
"""
