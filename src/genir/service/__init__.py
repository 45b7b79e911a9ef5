"""HTTP service (FastAPI, extra `serve`) and its web page; see `genir serve`."""
