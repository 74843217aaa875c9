"""Inference: the one :class:`~.embedder.Embedder` in front of every runtime.

- :mod:`.runtimes`: what runs the towers (torch, or OpenVINO converted once and cached), and the fidelity
  measurement that picks a precision;
- :mod:`.embedder`: ``Embedder``: texts and images in bulk, batching, decode workers, dtype;
- :mod:`.export`: both towers as ONNX or OpenVINO graphs, with the parity measured in the target runtime.

Importing this package imports none of them (no torch).
"""
