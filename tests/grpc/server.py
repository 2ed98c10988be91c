"""A real gRPC server for the pack's end-to-end tests (grpcio, no generated code).

Why: only a real gRPC implementation proves that what the pack sends is what gRPC clients and
servers understand. Every method is served by one generic handler with raw-bytes (de)serializers,
so no protoc and no .proto files are needed: the tests care about statuses, metadata and framing,
not about message schemas.

Usage: python3 server.py PORT

What a call does is chosen by its request metadata:
  x-respond-code: N     end the call with status N (0-16) and the message "server says N"
  x-delay-ms: N         wait N ms first (at most 60 s)
A method whose name ends in "Collect" is client-streaming (it answers after the last message);
every other method is unary. Both echo: the answer is the request (unary) or the concatenated
messages (streaming).

Output (stdout, one JSON object per line, flushed): {"ready": PORT} once serving, then one
{"method", "metadata", "bytes", "messages"} per call as it arrives. The server stops when its
standard input closes, so it never outlives the test process that started it.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

LOCK = threading.Lock()


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def identity(b):
    return b


def behave(metadata, context):
    """Applies the x-delay-ms and x-respond-code instructions; returns False if the call ended."""
    delay = metadata.get("x-delay-ms")
    if delay is not None:
        time.sleep(min(int(delay), 60_000) / 1000.0)
    code = metadata.get("x-respond-code")
    if code is not None and int(code) != 0:
        status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
        context.abort(status, "server says %d" % int(code))
    return True


def metadata_of(context):
    return {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}


class Handler(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        method = handler_call_details.method
        if method.endswith("Collect"):
            def collect(request_iterator, context):
                md = metadata_of(context)
                chunks = list(request_iterator)
                emit({"method": method, "metadata": md,
                      "bytes": sum(len(c) for c in chunks), "messages": len(chunks)})
                behave(md, context)
                return b"".join(chunks)

            return grpc.stream_unary_rpc_method_handler(
                collect, request_deserializer=identity, response_serializer=identity)

        def unary(request, context):
            md = metadata_of(context)
            emit({"method": method, "metadata": md, "bytes": len(request), "messages": 1,
                  "t": time.monotonic()})
            if CAPACITY is not None:
                # An overloaded server sheds at once with UNAVAILABLE, the status every gRPC
                # retry policy retries: the raw material of a retry storm.
                if not CAPACITY.acquire(blocking=False):
                    context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")
                try:
                    time.sleep(SERVICE_S)
                finally:
                    CAPACITY.release()
            behave(md, context)
            return request

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=identity, response_serializer=identity)


CAPACITY = None
SERVICE_S = 0.0


def main():
    global CAPACITY, SERVICE_S
    port = int(sys.argv[1])
    if len(sys.argv) >= 4:
        # `server.py PORT CAPACITY SERVICE_MS`: at most CAPACITY calls at once, each taking
        # SERVICE_MS; the rest are refused with UNAVAILABLE.
        CAPACITY = threading.BoundedSemaphore(int(sys.argv[2]))
        SERVICE_S = int(sys.argv[3]) / 1000.0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Handler(),))
    if server.add_insecure_port("127.0.0.1:%d" % port) != port:
        sys.exit("cannot listen on 127.0.0.1:%d" % port)
    server.start()
    emit({"ready": port})
    sys.stdin.read()  # EOF: the test process is gone
    server.stop(grace=None)


if __name__ == "__main__":
    main()
