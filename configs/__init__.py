"""Hydra configuration files of the command-line applications, installed as ``sde_control.configs`` (package data,
found through the ``pkg://sde_control.configs`` search path, so a non-editable install works)."""
