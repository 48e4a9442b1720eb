"""A tiny echo MainServer for the wire tests: the gradient it sends back is
the activations times two, the loss their mean."""

from __future__ import annotations

import grpc

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2_grpc
from fedsllm.wire.adapters import blob_to_chunks
from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo, TrainWelcomeInfo
from fedsllm.wire.tensors import TensorSpec, WireLimits, tensor_to_frame
from fedsllm.wire.train import read_uplink, step_download_responses, train_response

ECHO_ADAPTER = bytes(range(256)) * 5000
FLOATS = frozenset({"float32", "bfloat16", "float16"})


def echo_specs(header: StepHeaderInfo) -> list[TensorSpec]:
    return [
        TensorSpec("activations", FLOATS, ("B", "T", None), require_finite=True),
        TensorSpec("attention_mask", frozenset({"int64"}), ("B", "T")),
        TensorSpec("labels", frozenset({"int64"}), ("B", "T")),
    ]


class EchoMainServer(main_server_pb2_grpc.MainServerServicer):
    """Loss = mean of the activations; gradient = 2 * activations."""

    def __init__(self, chunk_bytes: int = 2**20) -> None:
        self.chunk_bytes = chunk_bytes

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        try:
            for item in read_uplink(request_iterator, echo_specs, WireLimits()):
                if not hasattr(item, "header"):
                    yield train_response(
                        TrainWelcomeInfo(
                            client_id=item.client_id,
                            scenario_hash=item.scenario_hash,
                            max_tensor_bytes=WireLimits().max_tensor_bytes,
                        )
                    )
                    continue
                acts = item.tensor("activations")
                names = ("activations_grad",) if item.header.mode == "train" else ()
                result = StepResultInfo(
                    round=item.header.round,
                    step=item.header.step,
                    loss=float(acts.float().mean()),
                    num_tokens=int(item.tensor("attention_mask").sum()),
                    server_compute_s=0.0,
                    server_receive_s=item.receive_s,
                    tensor_names=names,
                )
                frames = [tensor_to_frame("activations_grad", acts * 2)] if names else []
                yield from step_download_responses(result, frames, self.chunk_bytes)
        except WireError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    def GetServerAdapter(self, request, context):  # noqa: N802 - generated name
        yield from blob_to_chunks(ECHO_ADAPTER, 100_000)
