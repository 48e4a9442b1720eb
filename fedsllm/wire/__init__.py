"""The wire layer: the only place protobuf and gRPC are spoken.

- tensors.py: torch tensors <-> TensorFrame <-> Chunk streams (validated, assembled in place).
- codec.py: Chunk <-> TensorChunk message bytes, by hand, with one copy of the payload.
- adapters.py: safetensors blobs <-> PushAdapter / PullGlobal / GetServerAdapter streams.
- messages.py: typed records <-> every other message (x_to_proto / x_from_proto).
- packing.py: a step's chunks packed into part messages, and the plan that repeats it.
- train.py: the Train stream's grammar (builders and readers of whole steps) and codec.
- rpc.py: servers, channels, health, deadlines, retry, per-method codecs.
- protogen.py: regenerates fedsllm/proto/ from proto/fedsllm/proto/*.proto.

Submodules are imported explicitly (no re-exports) so importing one does not
pull in torch or grpc for the others.
"""
