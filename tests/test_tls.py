"""Direct HTTPS: Gunicorn takes TLS_CERTFILE / TLS_KEYFILE (a self-signed cert made here)."""

import datetime
import ipaddress
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.gunicorn_process import GunicornServer
from tests.conftest import server_env


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 valid for a day, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_a_self_signed_certificate(tiny_model, tmp_path: Path, api_headers) -> None:
    cert, key = _self_signed(tmp_path)
    env = server_env(tmp_path, TLS_CERTFILE=str(cert), TLS_KEYFILE=str(key))
    with GunicornServer(tmp_path, env, workers=1) as server:
        assert server.url.startswith("https://")
        response = requests.post(f"{server.url}/generate-text", headers=api_headers,
                                 json={"prompt": "Over TLS", "max_new_tokens": 2},
                                 verify=str(cert), timeout=30)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"]
        # The certificate is really checked: without trusting it, the handshake fails.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.url}/health", timeout=10)
        # And plain HTTP on the TLS port gets no API answer.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(server.url.replace("https://", "http://") + "/health", timeout=10)
