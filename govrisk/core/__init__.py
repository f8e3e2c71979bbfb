"""The core every layer may use: configs and their search path, hashing, the model registry, ONNX
loading and scoring, the typed feature schema and decision record, reasons and the master scale.

Nothing here imports another govrisk layer (import-linter enforces it, see pyproject.toml)."""
