"""A checkout-side client: generate gRPC code from the .proto, then call Score.

Run against `fraudscore up` (default 127.0.0.1:50051):

    .venv/bin/python examples/score_client.py [--target HOST:PORT] [--amount 950]

It does what an integrator in any language does: compile scoring.proto with protoc, build an Order,
call Score with a deadline, and read the decision, score, versions and reasons.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO = Path(__file__).resolve().parent.parent / "scoring" / "proto" / "fraudscore" / "v1" / "scoring.proto"


def generate(out: Path) -> tuple[object, object]:
    """protoc → scoring_pb2 / scoring_pb2_grpc in ``out``; returns the two modules."""
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, str(out))
    return importlib.import_module("scoring_pb2"), importlib.import_module("scoring_pb2_grpc")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051", help="gRPC address of the scoring server")
    ap.add_argument("--amount", type=float, default=950.0, help="order amount")
    ap.add_argument("--customer", default="cust-demo-1", help="customer id")
    ap.add_argument("--deadline-ms", type=float, default=500.0, help="call deadline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = generate(Path(tmp))
        now = dt.datetime.now(dt.UTC).isoformat()
        order = pb.Order(  # type: ignore[attr-defined]
            order_id=f"example-{uuid.uuid4().hex[:12]}", event_time=now, customer_id=args.customer,
            amount=args.amount, currency="EUR", channel="web", merchant_id="m-example",
            payment=pb.Payment(method="card", card_fingerprint="tok_example", card_bin="411111", card_country="DE"),  # type: ignore[attr-defined]
            ip_address="203.0.113.7", ip_country="FR", device_id="dev-example", email_domain="example.com",
            billing_country="DE", shipping_country="FR", account_created_at="2024-01-01T00:00:00+00:00",
        )
        with grpc.insecure_channel(args.target) as channel:
            stub = pb_grpc.FraudScoringStub(channel)  # type: ignore[attr-defined]
            try:
                resp = stub.Score(pb.ScoreRequest(order=order), timeout=args.deadline_ms / 1000.0)  # type: ignore[attr-defined]
            except grpc.RpcError as exc:
                print(f"Score failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
        print(f"order     {resp.order_id}")
        print(f"decision  {pb.Decision.Name(resp.decision)}")  # type: ignore[attr-defined]
        print(f"score     {resp.score:.4f}" if resp.HasField("score") else "score     (none: model unavailable)")
        print(f"model     {resp.model_version}")
        print(f"ruleset   {resp.ruleset_version}")
        print(f"degraded  {resp.degraded} {list(resp.degraded_reasons)}")
        for r in resp.matched_rules:
            print(f"rule      {r.name} -> {pb.Decision.Name(r.action)}{' (shadow)' if r.shadow else ''}")  # type: ignore[attr-defined]
        for r in resp.reasons:
            print(f"reason    {r.text}  (+{r.contribution:.3f})")
        print(f"latency   {resp.latency_ms:.2f} ms (server side)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
