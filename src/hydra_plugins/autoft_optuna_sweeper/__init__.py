"""Hydra sweeper plugin `autoft_optuna`: an Optuna ask/tell search for AutoFT (see `sweeper.py`)."""
