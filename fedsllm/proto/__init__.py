"""Generated protobuf and gRPC stubs; see proto/ and fedsllm.wire.protogen."""
