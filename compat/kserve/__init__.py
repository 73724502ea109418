"""KServe compatibility: v1 and v2 (Open Inference Protocol) REST over the same Engine.

Imports engines/ only. `dataplane.py` is transport-neutral; `v1.py` and `v2_rest.py` are thin
routes. Still to come: the binary tensor extension, v2 gRPC, transformer mode, text2text.
"""
