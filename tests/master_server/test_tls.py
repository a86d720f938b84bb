"""TLS end to end with a self-signed certificate the test makes (``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from collections.abc import Callable

import pytest

from determined_sdk import Determined
from determined_sdk.errors import MasterUnavailableError
from master_server.app import Master
from tests.support import PYTHON, single_config, write_model_dir

TRAIN = """
import core_api
with core_api.init() as ctx:
    for step in (5, 10):
        ctx.train.report_validation_metrics(steps_completed=step, metrics={"loss": 1.0 / step})
"""


def make_cert(where: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_end_to_end_and_no_silent_downgrade(
    master_factory: Callable[..., Master],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = make_cert(tmp_path)
    m = master_factory(tls_cert=cert, tls_key=key, initial_admin_password="pw")
    assert m.address.startswith("grpcs://127.0.0.1:")
    plain = f"127.0.0.1:{m.port}"
    fast = {"timeout": 10.0}

    # Plain text against the TLS master: refused, not downgraded.
    monkeypatch.delenv("DET_MASTER_CERT_FILE", raising=False)
    with pytest.raises(MasterUnavailableError):
        Determined(f"http://{plain}", "admin", "pw", **fast)
    # TLS without trusting the self-signed certificate: refused.
    with pytest.raises(MasterUnavailableError):
        Determined(f"https://{plain}", "admin", "pw", **fast)

    # Trusting it: the SDK, and a real trial (core_api + supervisor) over TLS.
    monkeypatch.setenv("DET_MASTER_CERT_FILE", str(cert))
    with Determined(f"grpcs://{plain}", "admin", "pw") as d:
        assert d.whoami().username == "admin"
        md = write_model_dir(tmp_path / "model", {"train.py": TRAIN})
        exp = d.create_experiment(single_config(f"{PYTHON} train.py"), md)
        assert exp.wait(interval=0.2, timeout=300).value == "COMPLETED"
        (trial,) = exp.list_trials()
        assert trial.summary_metrics["validation_metrics"]["loss"]["count"] == 2

    # The cert file alone (a bare host:port) also means TLS.
    with Determined(plain, "admin", "pw") as d:
        assert d.get_master_info().total_slots == 2


def test_tls_client_against_a_plain_master_fails(
    master: Master, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, _key = make_cert(tmp_path)
    monkeypatch.setenv("DET_MASTER_CERT_FILE", str(cert))
    with pytest.raises(MasterUnavailableError):
        Determined(master.address, "admin", "", timeout=10.0)
