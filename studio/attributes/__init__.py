"""Continuous attribute control: semantic directions at a subject's tokens (definitions, directions, learning,
the on-disk direction cache). The workbench's entry point is :mod:`studio.controllers.attributes`."""
