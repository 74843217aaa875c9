"""The model: its configuration and checkpoint cards, its math, its checkpoint files, its preprocessing.

Data flows down this list, and each module imports only those above it:

- :mod:`.config` (``AltCLIPConfig``), :mod:`.registry` (the checkpoint cards);
- :mod:`.images` (the one image loader and its rules), :mod:`.files` (finding and opening checkpoint files),
  :mod:`.processor` (tokenizer and image preprocessing);
- ``_mapping.py`` (the key-mapping engine) and :mod:`.hf` (the BAAI/transformers key table, load and save);
- :mod:`.core` (``AltCLIP``: text tower ``_text.py`` + vision tower ``_vision.py`` + projections);
- :mod:`.tiny` (random checkpoints in the exact BAAI layout, for tests and offline demos).

Importing this package imports none of them (no torch).
"""
