"""The KServe peer: the same model behind KServe's own Python ModelServer, for the bench.

It runs in an environment of its own (``.venv-kserve``, ``make kserve-venv``, pinned in
``requirements.txt``): kserve 0.21 needs protobuf 6 and the service runs protobuf 7. So nothing
here imports the service's generated protobuf code (``service.api``); it loads the version
with the training package's verified loader and transform, which import neither protobuf nor
gRPC.
"""
