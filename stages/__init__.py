"""Thin DVC stage entry points: read params and paths, call `pipeline`, write outputs."""
