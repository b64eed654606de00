"""Triton shim of the padellm orchestrator: parse parameters, build, delegate.

The logic lives in ``padellm_ensemble`` (the repo's ``ensemble/``).
"""

import asyncio
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
            # NOTE: the stub's sys.path is the base interpreter's; add the venv (and its
            # editable-install finders, hence addsitedir rather than sys.path).
            site.addsitedir(params["python_site_packages"])
        from padellm_ensemble.orchestrator import build_orchestrator
        from padellm_ensemble.stub_lifetime import exit_with_server
        from padellm_ensemble.triton_io import (
            InFlightGauge,
            SenderSink,
            input_getter,
            llm_transport,
        )

        self._sink, self._getter = SenderSink, input_getter
        self.orchestrator = build_orchestrator(params, llm_transport(params))
        self.in_flight = InFlightGauge(args["model_name"])
        self._stop_watch = exit_with_server()

    async def execute(self, requests):
        # NOTE: decoupled + async: the stub does not wait for this coroutine before
        # taking the next batch, so requests of many calls run concurrently.
        handle, counted = self.orchestrator.handle, self.in_flight.counted
        await asyncio.gather(
            *(counted(handle(self._getter(r), self._sink(r.get_response_sender()))) for r in requests)
        )
        return None

    def finalize(self):
        self.orchestrator.close()
        self.in_flight.stop()
        self._stop_watch()
