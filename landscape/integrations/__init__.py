"""Callbacks that run a `CurvatureMonitor` inside a training framework.

`landscape.integrations.lightning.CurvatureCallback` (PyTorch Lightning) and
`landscape.integrations.transformers.CurvatureCallback` (the Hugging Face `Trainer`). Each module
imports its framework when it is imported, and nothing here is imported by `import landscape`;
install the extra first: `pip install "landscape-probe[lightning]"` or `"[transformers]"`.
"""
