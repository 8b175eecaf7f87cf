"""Sweeps over PEFT methods and hyperparameters with Ray Tune and Optuna."""
