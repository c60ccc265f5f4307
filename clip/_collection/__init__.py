"""The machinery behind :mod:`clip.collection`: an embedded collection on disk.

* :mod:`~clip._collection.layout`: the files of a collection folder, the format versions this clip
  reads and writes, and the error every part raises;
* :mod:`~clip._collection.runs`: what a run is (model, its SHA256, settings), shards and the manifest
  as ``clip embed`` and ``from_arrays`` write them;
* :mod:`~clip._collection.metadata`: the per-item table (path, caption, shard, row, tar, key) in SQLite;
* :mod:`~clip._collection.reading`: a collection opened for reading (format 1, 2 and 3), exact search;
* :mod:`~clip._collection.index`: the faiss index, its tuning against exact search, its freshness;
* :mod:`~clip._collection.tars`: webdataset (img2dataset) ``.tar`` shards read in place.

Each module imports only those listed above it; the command line (clip/_cli/) calls into this
package, never the other way round.
"""
