"""Paced gRPC callers for the failure lab's retry storm: open-loop load with grpcio's own retries.

Why open loop: a storm is callers that keep calling at their rate while the server sheds; each
call is started at its scheduled time on a pool of threads, so a slow or retried call does not
hold the next one back. Retries are grpcio's, by a standard service-config retry policy (and so
is honouring grpc-retry-pushback-ms).

Usage: python3 storm.py SPEC_JSON
  {"target": "127.0.0.1:PORT", "method": "/test.Echo/Unary", "timeout_s": 1.0,
   "retry": {"max_attempts": 4, "initial_backoff_s": 0.01, "max_backoff_s": 0.01,
             "codes": ["UNAVAILABLE"]},
   "phases": [{"from_s": 0, "to_s": 2, "rate": 50}, ...], "threads": 128}
Output: {"t0": MONOTONIC} first (the load's start, comparable with the server's "t"), then one
line per call: {"at_s": start since t0, "code": "OK", "elapsed_ms": 12.5}.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

from client import service_config, identity

LOCK = threading.Lock()


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")


def main():
    spec = json.loads(sys.argv[1])
    options = [("grpc.enable_retries", 1)]
    config = service_config(spec.get("retry"))
    if config:
        options.append(("grpc.service_config", config))
    channel = grpc.insecure_channel(spec["target"], options=options)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = channel.unary_unary(spec["method"], request_serializer=identity,
                               response_deserializer=identity)
    timeout = spec.get("timeout_s", 1.0)
    starts = []
    for phase in spec["phases"]:
        step = 1.0 / phase["rate"]
        t = phase["from_s"]
        while t < phase["to_s"]:
            starts.append(t)
            t += step
    pool = futures.ThreadPoolExecutor(max_workers=spec.get("threads", 128))
    t0 = time.monotonic()
    emit({"t0": t0})

    def one(at):
        started = time.monotonic()
        try:
            stub.with_call(b"", timeout=timeout)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        emit({"at_s": at, "code": code, "elapsed_ms": (time.monotonic() - started) * 1000.0})

    for at in starts:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pool.submit(one, at)
    pool.shutdown(wait=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
