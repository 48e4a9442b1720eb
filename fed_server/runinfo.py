"""RunInfo servicer: the resolved scenario and the base weights, for roles
that share nothing with the fed server but gRPC (fedsllm.bootstrap)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc

from fedsllm.bootstrap import fetch_base_responses
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class RunInfoService(pb_grpc.RunInfoServicer):
    def __init__(
        self,
        scenario_doc: dict,
        scenario_hash: str,
        base_hash: str,
        base_file: Path | None,
        chunk_bytes: int,
    ) -> None:
        self.scenario_json = json.dumps(scenario_doc, sort_keys=True, default=str)
        self.scenario_hash = scenario_hash
        self.base_hash = base_hash
        self.base_file = base_file
        self.chunk_bytes = chunk_bytes

    def GetScenario(
        self, request: pb.GetScenarioRequest, context: grpc.ServicerContext
    ) -> pb.GetScenarioResponse:
        return pb.GetScenarioResponse(
            scenario_json=self.scenario_json,
            scenario_hash=self.scenario_hash,
            base_hash=self.base_hash,
            base_bytes=self.base_file.stat().st_size if self.base_file is not None else 0,
        )

    def FetchBase(
        self, request: pb.FetchBaseRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchBaseResponse]:
        if self.base_file is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this run's base is built by each role from the scenario; nothing to fetch",
            )
        yield from fetch_base_responses(self.base_file, self.base_hash, self.chunk_bytes)
