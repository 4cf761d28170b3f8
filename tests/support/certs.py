"""
Real X.509 certificates for TLS tests: a CA, a server certificate for 127.0.0.1 and
localhost, and client certificates, written as PEM files (``cryptography``).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_pki"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: Optional[Tuple[Any, x509.Certificate]] = None,
    server: bool = False,
) -> Tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    signing_key, issuer_name = (key, _name(subject)) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return key, builder.sign(signing_key, hashes.SHA256())


def _write(folder: Path, stem: str, key: Any, cert: x509.Certificate) -> Dict[str, Path]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"key": key_path, "cert": cert_path}


def make_pki(folder: Path) -> Dict[str, Dict[str, Path]]:
    """
    PEM files under ``folder``: ``ca`` (cert), ``server`` and ``client`` signed by it,
    and ``stranger``, a client certificate of another CA. Each entry has ``key`` and
    ``cert`` paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca = _issue("v2d test CA")
    other_ca = _issue("another CA")
    return {
        "ca": _write(folder, "ca", *ca),
        "server": _write(folder, "server", *_issue("127.0.0.1", ca, server=True)),
        "client": _write(folder, "client", *_issue("trusted client", ca)),
        "stranger": _write(folder, "stranger", *_issue("stranger", other_ca)),
    }
