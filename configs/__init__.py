"""Hydra configuration files of the command-line applications (shipped as package data and
found through the ``pkg://configs`` search path, so a non-editable install works)."""
