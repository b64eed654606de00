"""Serving padellm-ner behind Triton: the server process and the ``serve`` command."""

from padellm_ner.serving.serve import run_serve
from padellm_ner.serving.triton_server import TritonServer, TritonServerError, find_tritonserver

__all__ = ["TritonServer", "TritonServerError", "find_tritonserver", "run_serve"]
