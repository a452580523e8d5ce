"""TLS, mTLS and bearer tokens against a real server; certificates are generated per test run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contracts.config import TlsSettings
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, san: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server cert for localhost, a client cert from the CA and one from a rogue CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    rogue = _cert("rogue-ca", rogue_key, "rogue-ca", rogue_key, ca=True)
    skey, ckey, bkey = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    files = {
        "ca": _pem(ca), "server_cert": _pem(_cert("localhost", skey, "test-ca", ca_key, ca=False, san=True)),
        "server_key": _pem(skey), "client_cert": _pem(_cert("checkout", ckey, "test-ca", ca_key, ca=False)),
        "client_key": _pem(ckey), "bad_cert": _pem(_cert("checkout", bkey, "rogue-ca", rogue_key, ca=False)),
        "bad_key": _pem(bkey), "rogue_ca": _pem(rogue),
    }
    out = {}
    for k, v in files.items():
        (d / f"{k}.pem").write_bytes(v)
        out[k] = d / f"{k}.pem"
    return out


_OPTS = (("grpc.ssl_target_name_override", "localhost"),)


async def _score(ch: grpc.aio.Channel, **kw: Any) -> pb.ScoreResponse:
    return await pb_grpc.FraudScoringStub(ch).Score(pb.ScoreRequest(order=order_msg()), timeout=5, **kw)


async def test_tls_server_answers_tls_and_refuses_plaintext(grpc_server: Any, channel_for: Any,
                                                            pki: dict[str, Path]) -> None:
    srv = await grpc_server(tls=TlsSettings(cert_file=pki["server_cert"], key_file=pki["server_key"]))
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    assert (await _score(channel_for(srv.target, creds, options=_OPTS))).order_id == "o-1"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _score(channel_for(srv.target))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_ca(grpc_server: Any, channel_for: Any,
                                                              pki: dict[str, Path]) -> None:
    srv = await grpc_server(tls=TlsSettings(cert_file=pki["server_cert"], key_file=pki["server_key"],
                                            client_ca_file=pki["ca"]))
    ca = pki["ca"].read_bytes()
    good = grpc.ssl_channel_credentials(ca, pki["client_key"].read_bytes(), pki["client_cert"].read_bytes())
    assert (await _score(channel_for(srv.target, good, options=_OPTS))).order_id == "o-1"
    for creds in (grpc.ssl_channel_credentials(ca),  # no client certificate
                  grpc.ssl_channel_credentials(ca, pki["bad_key"].read_bytes(), pki["bad_cert"].read_bytes())):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _score(channel_for(srv.target, creds, options=_OPTS))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_bearer_token_required_when_configured(grpc_server: Any, channel_for: Any) -> None:
    srv = await grpc_server(tokens=("s3cret-1", "s3cret-2"))
    ch = channel_for(srv.target)
    for md in (None, (("authorization", "Bearer wrong"),), (("authorization", "s3cret-1"),)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _score(ch, metadata=md)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "s3cret" not in (err.value.details() or "")
    assert (await _score(ch, metadata=(("authorization", "Bearer s3cret-2"),))).order_id == "o-1"
    # health stays open for probes
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert h.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_off_unless_enabled(grpc_server: Any, channel_for: Any) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def services(target: str) -> list[str] | grpc.StatusCode:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel_for(target))
        try:
            ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            async for resp in stub.ServerReflectionInfo(ask, timeout=5):
                return [s.name for s in resp.list_services_response.service]
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return []

    off = await grpc_server()
    assert await services(off.target) == grpc.StatusCode.UNIMPLEMENTED
    on = await grpc_server(**{"scoring.reflection": True})
    assert "fraudscore.v1.FraudScoring" in await services(on.target)


async def test_message_size_limit(grpc_server: Any, channel_for: Any) -> None:
    srv = await grpc_server(**{"scoring.max_message_bytes": 2048})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.FraudScoringStub(channel_for(srv.target)).ScoreBatch(
            pb.ScoreBatchRequest(orders=[order_msg(order_id=f"x{i}") for i in range(100)]), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
