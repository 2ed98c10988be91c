"""A real gRPC client for the pack's end-to-end tests: reports what grpcio itself makes of an answer.

Why: a test that reads headers off the wire proves the bytes; this proves the meaning. The status
code, the message and the trailing metadata are what grpcio hands the application, the binary
status is decoded by the real google.rpc protos (grpcio-status checks it agrees with the status),
and retries are grpcio's own, driven by a standard gRPC service-config retry policy, so pushback
that is honoured shows up as time waited and attempts not made.

Usage: python3 client.py SPEC_JSON

SPEC_JSON:
  {"target": "127.0.0.1:PORT",
   "retry": null | {"max_attempts": 4, "initial_backoff_s": 0.01, "max_backoff_s": 0.01,
                    "codes": ["UNAVAILABLE"]},
   "parallel": 1,
   "calls": [{"method": "/test.Echo/Unary", "timeout_s": null, "metadata": [["k", "v"]],
              "payload_bytes": 0, "messages": null}]}
A call with "messages": N is client-streaming (N messages of payload_bytes each); a call with
"retry": false goes through a second channel that has retries off, so one run can both look at a
refusal and then see what the retry policy does with the next one. "pause_s": S waits S seconds
before the call (sequential runs only), so one run can trip a breaker and then look at it.

Output: one JSON object per call, in the order of "calls", each on its own line:
  {"code": "DEADLINE_EXCEEDED", "code_value": 4, "details": "...", "elapsed_ms": 1.5,
   "initial_metadata": {...}, "trailing_metadata": {...},
   "status": null | {"code": 4, "message": "...", "retry_delay_ms": null | N,
                     "error_info": null | {"reason", "domain", "metadata"}}}
"""

import json
import sys
import time
from concurrent import futures

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def identity(b):
    return b


def service_config(retry):
    if not retry:
        return None
    return json.dumps({
        "methodConfig": [{
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": retry.get("max_attempts", 4),
                "initialBackoff": "%gs" % retry.get("initial_backoff_s", 0.01),
                "maxBackoff": "%gs" % retry.get("max_backoff_s", 0.01),
                "backoffMultiplier": 1,
                "retryableStatusCodes": retry.get("codes", ["UNAVAILABLE"]),
            },
        }]
    })


def md_dict(md):
    out = {}
    for k, v in md or ():
        out[k] = v.hex() if isinstance(v, bytes) else v
    return out


def rich_status(call):
    """The google.rpc.Status in grpc-status-details-bin, decoded by the real protos."""
    try:
        st = rpc_status.from_call(call)
    except ValueError as e:  # the binary status disagrees with grpc-status or grpc-message
        return {"error": str(e)}
    if st is None:
        return None
    out = {"code": st.code, "message": st.message, "retry_delay_ms": None, "error_info": None}
    for any_ in st.details:
        if any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            any_.Unpack(info)
            d = info.retry_delay
            out["retry_delay_ms"] = d.seconds * 1000 + d.nanos // 1_000_000
        elif any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
            out["error_info"] = {"reason": info.reason, "domain": info.domain,
                                 "metadata": dict(info.metadata)}
    return out


def one_call(channel, call):
    if call.get("pause_s"):
        time.sleep(call["pause_s"])
    method = call["method"]
    payload = b"x" * call.get("payload_bytes", 0)
    metadata = [tuple(kv) for kv in call.get("metadata", [])]
    timeout = call.get("timeout_s")
    started = time.monotonic()
    if call.get("messages") is not None:
        stub = channel.stream_unary(method, request_serializer=identity,
                                    response_deserializer=identity)
        requests = iter([payload] * call["messages"])
        invoke = lambda: stub.with_call(requests, timeout=timeout, metadata=metadata)
    else:
        stub = channel.unary_unary(method, request_serializer=identity,
                                   response_deserializer=identity)
        invoke = lambda: stub.with_call(payload, timeout=timeout, metadata=metadata)
    try:
        _, rpc = invoke()
        result = rpc
        failed = None
    except grpc.RpcError as e:
        result = e
        failed = e
    elapsed = (time.monotonic() - started) * 1000.0
    code = result.code()
    return {
        "code": code.name,
        "code_value": code.value[0],
        "details": result.details(),
        "elapsed_ms": round(elapsed, 2),
        "initial_metadata": md_dict(result.initial_metadata()),
        "trailing_metadata": md_dict(result.trailing_metadata()),
        "status": rich_status(failed) if failed is not None else None,
    }


def main():
    spec = json.loads(sys.argv[1])
    options = [("grpc.enable_retries", 1 if spec.get("retry") else 0)]
    config = service_config(spec.get("retry"))
    if config:
        options.append(("grpc.service_config", config))
    plain_options = [("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(spec["target"], options=options) as channel, \
            grpc.insecure_channel(spec["target"], options=plain_options) as plain:
        calls = spec["calls"]
        grpc.channel_ready_future(channel).result(timeout=10)
        if any(c.get("retry") is False for c in calls):
            grpc.channel_ready_future(plain).result(timeout=10)

        def run(c):
            return one_call(plain if c.get("retry") is False else channel, c)

        parallel = max(1, int(spec.get("parallel", 1)))
        if parallel == 1:
            results = [run(c) for c in calls]
        else:
            with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
                results = list(pool.map(run, calls))
    for r in results:
        sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
