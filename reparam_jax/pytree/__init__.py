"""Pytree utilities shared by every room: parameter paths."""
