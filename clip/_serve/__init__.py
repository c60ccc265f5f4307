"""``clip serve``: one process keeps a model loaded and answers over HTTP (FastAPI + uvicorn).

* :mod:`~clip._serve.batching`: the one model worker thread, gathering concurrent requests into batches;
* :mod:`~clip._serve.images`: uploads decoded (and refused) for a client, thumbnails of collection items;
* :mod:`~clip._serve.limits`: the upload limit (413) and the Host check of a loopback server (400);
* :mod:`~clip._serve.app`: the FastAPI application, its endpoints and its JSON errors;
* ``static/``: the search page served at ``/`` (plain HTML, CSS and JavaScript; no build step).

FastAPI, uvicorn and python-multipart are the optional extra ``clip-faithful[serve]``: ``import clip``
never imports this package; the command line (clip/_cli/serve.py) imports it when asked to serve.
"""
