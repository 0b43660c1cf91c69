#!/usr/bin/env python3
"""Idle workers against a protocol-3 coordinator (the commit before issue 19).

Registers N fresh keys (admission did not exist) and has each poll
GET /v1/round until killed, never committing: the baseline of
docs/BENCHMARKS.md's "absent workers" measurement. Protocol 3 signs
run || method || path || nonce || BLAKE3(body) under the domain
"crowdtrain/request/v1"; the bodies here are empty.

usage: idle-workers-protocol3.py URL COUNT
"""
import json
import struct
import sys
import threading
import time
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

EMPTY_BLAKE3 = bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
DOMAIN = b"crowdtrain/request/v1"


def signed(key, run, method, path):
    nonce = int(time.time() * 1e6)
    message = run
    for field in (method.encode(), path.encode()):
        message += struct.pack("<Q", len(field)) + field
    message += struct.pack("<Q", nonce) + EMPTY_BLAKE3
    signature = key.sign(struct.pack("<Q", len(DOMAIN)) + DOMAIN + message)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"x-crowdtrain-run": run.hex(), "x-crowdtrain-auth": f"{public.hex()}:{nonce}:{signature.hex()}"}


def idle(url, run):
    key = Ed25519PrivateKey.generate()
    path = "/v1/workers?class=avx2-fma"
    request = urllib.request.Request(url + path, data=b"", method="POST", headers=signed(key, run, "POST", path))
    urllib.request.urlopen(request).read()
    while True:
        path = "/v1/round?wait_ms=200"
        try:
            request = urllib.request.Request(url + path, headers=signed(key, run, "GET", path))
            urllib.request.urlopen(request, timeout=5).read()
        except Exception:
            time.sleep(0.2)


def main():
    url, count = sys.argv[1].rstrip("/"), int(sys.argv[2])
    run = bytes.fromhex(json.load(urllib.request.urlopen(url + "/v1/run"))["body"]["run_id"])
    for _ in range(count):
        threading.Thread(target=idle, args=(url, run), daemon=True).start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
