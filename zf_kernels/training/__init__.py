"""Pieces of the trainer: presets, schedules, checkpoints, evaluation and reports."""
