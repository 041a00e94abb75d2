"""`heatrec site-keys` without a broker: what it makes, that it is idempotent per site, rotation, and its errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from service.cli import build_parser, main
from service.fleet.keys import CENTRAL_PASSWORD_VAR, SITE_PASSWORD_VAR, FleetKeys, KeysError
from service.fleet_config import UplinkConfig
from service.localservers.mosquitto import verify_password

URL = "mqtts://central.example.net:8883"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _env(path: Path, var: str) -> str:
    line = path.read_text().strip()
    assert line.startswith(f"{var}=")
    return line.split("=", 1)[1]


def _passwd(root: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (root / "broker" / "passwd").read_text().splitlines())


def test_first_site_makes_the_ca_the_broker_and_the_site_and_private_files_are_0600(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    done = FleetKeys(fleet).issue("odense-1", url=URL, broker_hosts=["central.example.net", "10.0.0.5"])
    assert done is not None and done.made
    for key in ("ca/ca.key", "broker/server.key", "central/central.key", "sites/odense-1/pki/odense-1.key",
                "sites/odense-1/uplink.env", "central/central.env", "broker/passwd", "broker/acl"):
        assert stat.S_IMODE((fleet / key).stat().st_mode) == 0o600, key
    ca = x509.load_pem_x509_certificate((fleet / "ca/ca.crt").read_bytes())
    site = x509.load_pem_x509_certificate((fleet / "sites/odense-1/pki/odense-1.crt").read_bytes())
    server = x509.load_pem_x509_certificate((fleet / "broker/server.crt").read_bytes())
    for cert in (site, server):
        cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ExtendedKeyUsageOID.CLIENT_AUTH in site.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["central.example.net", "10.0.0.5"]
    # The password: strong, in the env file, hashed in the broker's file.
    pw = _env(fleet / "sites/odense-1/uplink.env", SITE_PASSWORD_VAR)
    assert len(pw) >= 32
    hashes = _passwd(fleet)
    assert set(hashes) == {"odense-1", "central"} and verify_password(pw, hashes["odense-1"])
    assert verify_password(_env(fleet / "central/central.env", CENTRAL_PASSWORD_VAR), hashes["central"])
    acl = (fleet / "broker/acl").read_text()
    assert "user odense-1\ntopic read heatrec/v1/odense-1/ack\ntopic write heatrec/v1/odense-1/batch\n" in acl
    assert "user central\ntopic read heatrec/v1/+/batch" in acl
    # The [uplink] section is a valid one for this site.
    import tomllib
    doc = tomllib.loads(done.uplink_toml)["uplink"]
    assert doc["password"] == "${HEATREC_UPLINK_PASSWORD}"
    cfg = UplinkConfig.model_validate({**doc, "password": pw})
    assert cfg.site == "odense-1" and cfg.url == URL and cfg.tls_cert_file == "pki/odense-1.crt"
    assert done.sites_entry == '[[sites]]\nid = "odense-1"\n'


def test_running_again_changes_nothing_and_a_new_site_keeps_the_others(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    FleetKeys(fleet).issue("odense-1", url=URL, broker_hosts=["central.example.net"])
    before = _tree(fleet)
    again = FleetKeys(fleet).issue("odense-1")
    assert again is not None and again.made == []
    assert _tree(fleet) == before  # byte for byte: no silent rotation, not even a new hash salt
    FleetKeys(fleet).issue("aarhus-dc")
    after = _tree(fleet)
    for name, data in before.items():
        if not name.startswith(("broker/passwd", "broker/acl", "central/sites.toml")):
            assert after[name] == data, name
    assert _passwd(fleet)["odense-1"] == _passwd(tmp_path / "fleet")["odense-1"]
    assert set(_passwd(fleet)) == {"odense-1", "aarhus-dc", "central"}
    assert (fleet / "central/sites.toml").read_text().count("[[sites]]") == 2


def test_rotate_replaces_only_the_named_site(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    keys = FleetKeys(fleet)
    keys.issue("odense-1", url=URL, broker_hosts=["central.example.net"])
    keys.issue("aarhus-dc")
    before = _tree(fleet)
    done = FleetKeys(fleet).issue("aarhus-dc", rotate=True)
    assert done is not None and "sites/aarhus-dc/pki/aarhus-dc.key" in done.made
    after = _tree(fleet)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"sites/aarhus-dc/pki/aarhus-dc.key", "sites/aarhus-dc/pki/aarhus-dc.crt",
                       "sites/aarhus-dc/uplink.env", "broker/passwd"}
    assert verify_password(_env(fleet / "sites/aarhus-dc/uplink.env", SITE_PASSWORD_VAR), _passwd(fleet)["aarhus-dc"])


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="give --url"):
        FleetKeys(tmp_path / "a").issue("odense-1")
    assert not (tmp_path / "a").exists()
    with pytest.raises(KeysError, match="lower case"):
        FleetKeys(tmp_path / "b").issue("Odense/1", url=URL)
    with pytest.raises(KeysError, match="centre's broker identity"):
        FleetKeys(tmp_path / "b").issue("central", url=URL)
    with pytest.raises(KeysError, match="mqtts://HOST"):
        FleetKeys(tmp_path / "b").issue("odense-1", url="mqtt://central.example.net:1883")
    fleet = tmp_path / "fleet"
    FleetKeys(fleet).issue("odense-1", url=URL, broker_hosts=["central.example.net"])
    with pytest.raises(KeysError, match="--rotate"):
        FleetKeys(fleet).issue(None, broker_hosts=["other.example.net"])
    FleetKeys(fleet).issue(None, broker_hosts=["other.example.net"], rotate=True)
    # A certificate that is not this CA's (another fleet's pasted in) is refused, with the way out.
    FleetKeys(tmp_path / "other").issue("odense-1", url=URL)
    for f in ("odense-1.crt", "odense-1.key"):
        (fleet / "sites/odense-1/pki" / f).write_bytes((tmp_path / "other/sites/odense-1/pki" / f).read_bytes())
    with pytest.raises(KeysError, match="--rotate"):
        FleetKeys(fleet).issue("odense-1")
    (fleet / "ca/ca.key").unlink()
    with pytest.raises(KeysError, match="restore it from your backup"):
        FleetKeys(fleet).issue("odense-1")


def test_cli_prints_the_sections_and_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = str(tmp_path / "fleet")
    assert main(["site-keys", "--dir", fleet, "--url", URL, "vestforbraending"]) == 0
    out, err = capsys.readouterr()
    assert '[uplink]\nurl = "mqtts://central.example.net:8883"\nsite = "vestforbraending"' in out
    assert '[[sites]]\nid = "vestforbraending"' in out and "issued" in err
    assert main(["site-keys", "--dir", fleet, "vestforbraending"]) == 0
    assert "unchanged" in capsys.readouterr().err
    assert main(["site-keys", "--dir", str(tmp_path / "new"), "x1"]) == 2
    assert capsys.readouterr().err.startswith("heatrec: error: ")


def test_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["site-keys", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "site-keys" in build_parser().format_help()
    for word in ("SITE", "--dir", "--url", "--broker-host", "--rotate", "--days", "fleet CA", "[uplink]"):
        assert word in text, word
