"""Serving: the BentoML real-time scoring endpoint (onnxruntime only; never torch or Lightning)."""
