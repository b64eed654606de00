"""The padellm orchestrator's logic, importable without Triton.

Only ``triton_io`` imports ``triton_python_backend_utils``; everything else is plain
Python + numpy and is tested without a server.
"""

from padellm_ensemble.validation import ErrorCode, NERRequest, RequestValidationError, parse_request

__all__ = ["ErrorCode", "NERRequest", "RequestValidationError", "parse_request"]
