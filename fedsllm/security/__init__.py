"""Who is calling: certificates (certs), identities and the server interceptor
(identity), and the gRPC credentials built from TLS files (credentials).

Nothing here knows a service: the roles install `IdentityInterceptor` on their
servers and ask `caller(context)` in their handlers; fedsllm.wire.status maps
the errors raised here to status codes.
"""
