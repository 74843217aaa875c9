"""Collections: many images and texts into embedding folders, indexes over them, search.

The flow follows clip-retrieval's ``clip_inference`` (reader -> mapper -> writer, and a distributor that only
decides where the same worker runs):

- :mod:`.inputs` (files and text lines on disk) and :mod:`.shards` (the readers: folders, webdataset tars,
  img2dataset parquet, each item with its identity);
- :mod:`.plan` (what an incremental run must do: run records, which shards changed) and :mod:`.worker`
  (read -> embed -> write one shard);
- :mod:`.store` (embedding folders in clip-retrieval's layout) and :mod:`.files` (single-file outputs);
- :mod:`.index_rules`, :mod:`.index_files`, :mod:`.index` (FAISS indexes: autofaiss' rules, the index files and
  their manifest, build and update) and :mod:`.search`;
- :mod:`.run` (``embed_folder``: the whole incremental run, here or on Ray) and :mod:`.ray` (Ray Data).

Importing this package imports none of them.
"""
