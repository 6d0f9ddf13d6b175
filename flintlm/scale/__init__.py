"""flintlm on Ray Serve (`flintlm serve --ray`): an HTTP ingress and N engine replicas.

Imported only by `--ray`: nothing outside this package imports Ray, so the single-process server
never needs it (`pip install flintlm[ray]` adds it).
"""
