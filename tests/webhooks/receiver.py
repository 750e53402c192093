#!/usr/bin/env python3
"""A webhook receiver for the integration tests: verifies every delivery's Standard Webhooks
signature with Python's own hmac (an implementation independent of the worker's), and with the
official Standard Webhooks library (`standardwebhooks`, from PyPI) where it is installed, records
it, and answers as told per lab: accept, fail N times, or hang.

Usage: python3 receiver.py WHSEC_SECRET [WHSEC_SECRET...]   (prints "listening on http://127.0.0.1:PORT")
       Each delivery records `verified_by` (the indexes of the secrets whose signature it carries,
       by Python's hmac) and `official_by` (the same by the official library; null without it);
       `verified` is whether any secret verifies it. Several secrets: a secret rotation.
Control: GET /__receiver/deliveries   every delivery received, verified or not, as JSON
         GET /__receiver/deliveries?lab=x   only those for lab x (a long run's list grows large)
         POST /__receiver/mode        {"lab_request_id": "x", "fail": 3} or {"...": "x", "hang": true}
"""
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

SECRETS = sys.argv[1:]
KEYS = [base64.b64decode(s.removeprefix("whsec_")) for s in SECRETS]
try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    OFFICIAL = [Webhook(s) for s in SECRETS]
except ImportError:  # not installed: `official_by` is null
    OFFICIAL = None
LOCK = threading.Lock()
DELIVERIES = []
MODES = {}  # lab_request_id -> {"fail": n} | {"hang": True}


def verify(key, msg_id, timestamp, body, signature_header):
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in signature_header.split(" ")
    )


def official(webhook, body, headers):
    try:
        webhook.verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/__receiver/deliveries":
            lab = parse_qs(query).get("lab", [None])[0]
            with LOCK:
                found = [d for d in DELIVERIES if lab is None or d.get("lab_request_id") == lab]
                return self.answer(200, found)
        self.answer(404, {"error": "no such path"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/__receiver/mode":
            mode = json.loads(body)
            with LOCK:
                MODES[mode.pop("lab_request_id")] = mode
            return self.answer(200, {"ok": True})
        received = time.time()
        msg_id = self.headers.get("webhook-id", "")
        timestamp = self.headers.get("webhook-timestamp", "")
        signature = self.headers.get("webhook-signature", "")
        verified_by = [i for i, key in enumerate(KEYS) if verify(key, msg_id, timestamp, body, signature)]
        verified = bool(verified_by)
        headers = {k: v for k, v in self.headers.items()}
        official_by = None if OFFICIAL is None else [
            i for i, webhook in enumerate(OFFICIAL) if official(webhook, body, headers)
        ]
        try:
            event = json.loads(body)
            lab = event["data"]["lab_request_id"]
        except (ValueError, KeyError, TypeError):
            event, lab = None, None
        with LOCK:
            mode = MODES.get(lab, {})
            if mode.get("fail", 0) > 0:
                mode["fail"] -= 1
                outcome = 503
            elif mode.get("hang"):
                outcome = "hang"
            else:
                outcome = 200 if verified else 400
            DELIVERIES.append({
                "received_ms": int(received * 1000),
                "id": msg_id,
                "timestamp": timestamp,
                "signature": signature,
                "verified": verified,
                "verified_by": verified_by,
                "official_by": official_by,
                "user_agent": self.headers.get("User-Agent", ""),
                "content_type": self.headers.get("Content-Type", ""),
                "body": body.decode("utf-8", "replace"),
                "type": event and event.get("type"),
                "lab_request_id": lab,
                "answered": outcome,
            })
        if outcome == "hang":
            time.sleep(60)
            return
        self.answer(outcome, {"received": True} if outcome == 200 else {"error": "told to fail"})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
