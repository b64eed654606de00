"""Triton shim of the torch LLM: tensorrt_llm contract onto the in-flight engine.

Each request joins the engine's running batch (``EngineLoop``); tokens are sent back
from the engine thread. The mapping lives in ``padellm_ensemble.llm_server``.
"""

import faulthandler
import json
import site


def _parameters(args):
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        faulthandler.enable(all_threads=True)  # NOTE: a stub crash leaves Python stacks in the server log
        params = _parameters(args)
        if params.get("python_site_packages"):
            site.addsitedir(params["python_site_packages"])  # NOTE: see padellm/1/model.py
        from padellm_ensemble import triton_io
        from padellm_ensemble.llm_server import InflightLLMServer, LLMWireError, parse_llm_request
        from padellm_ensemble.stub_lifetime import exit_with_server
        from padellm_ner.engine import EngineCore, EngineLoop

        self._io, self._parse, self._wire_error = triton_io, parse_llm_request, LLMWireError
        core = EngineCore.from_pretrained(
            params.get("model") or "default",
            device=params.get("device") or "cpu",
            dtype=params.get("dtype") or "float32",
            max_batch_size=int(params.get("max_batch_size") or 64),
        )
        # NOTE: 5 ms by default: an idle engine admits the orchestrator's count requests,
        # sent a few ms apart, in one step (BENCHMARKS.md: 10.76 -> 8.06 forwards/sentence).
        window_us = float(params.get("batch_window_us") or 5000)
        self.loop = EngineLoop(core, batch_window_s=window_us / 1e6)
        self.metrics = triton_io.EngineMetrics(args["model_name"])
        self.server = InflightLLMServer(self.loop, on_finish=self._refresh_metrics)
        self.metrics.start_refresher(self._refresh_metrics)
        self._stop_watch = exit_with_server()  # NOTE: last: a load may take minutes

    def _refresh_metrics(self):
        metrics = self.metrics  # NOTE: None once finalized
        if metrics is not None:
            metrics.update(self.loop.stats, self.server.num_active)

    def execute(self, requests):
        io = self._io
        for request in requests:
            sender = request.get_response_sender()
            try:
                wire = self._parse(io.input_getter(request), request.request_id())
                self.server.submit(wire, io.llm_send(sender), sender.is_cancelled)
            except self._wire_error as exc:
                sender.send(io.error_response(str(exc), io.ErrorCode.INVALID_ARGUMENT), flags=io.FINAL)
        self._refresh_metrics()
        return None

    def finalize(self):
        self.metrics.stop()
        self.loop.shutdown()
        self.metrics = None
        self._stop_watch()
