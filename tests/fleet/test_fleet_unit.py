"""The fleet's wire format, the site outbox's numbering and acknowledgement, and the config models (no network)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.config import ConfigError, load_central_config, parse_config
from service.fleet import wire
from service.fleet.outbox import Outbox
from service.model import Quality, Sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def samples(n: int, start: int = 0, point: str = "hp1.supply_temperature") -> list[Sample]:
    """n distinct samples, one per second from T0 + start."""
    return [Sample(point, float(i), Quality.GOOD, T0 + timedelta(seconds=start + i), T0) for i in range(n)]


def test_batch_message_round_trip_keeps_every_field_and_sample() -> None:
    body = wire.encode_samples([*samples(3), Sample("hp1.status", None, Quality.BAD, T0, T0)])
    msg = wire.encode_message("site-a", 7, 42, 40, T0, 123, 3, body)
    b = wire.decode_message(msg)
    assert (b.site, b.epoch, b.seq, b.base, b.created, b.backlog_samples, b.backlog_batches) == \
        ("site-a", 7, 42, 40, T0, 123, 3)
    assert [(s.point, s.value, s.quality, s.source_time) for s in b.samples] == \
        [(s.point, s.value, s.quality, s.source_time) for s in [*samples(3), Sample("hp1.status", None,
                                                                                    Quality.BAD, T0, T0)]]


@pytest.mark.parametrize(("mangle", "why"), [
    (lambda m: b"XXXX" + m[4:], "magic"),
    (lambda m: m[:-3], "checksum"),
    (lambda m: m[:10], "truncated"),
    (lambda m: m[:-1] + bytes([m[-1] ^ 1]), "checksum"),
    (lambda m: b"", "shorter"),
])
def test_damaged_batch_messages_are_refused_whole(mangle: Callable[[bytes], bytes], why: str) -> None:
    msg = wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, wire.encode_samples(samples(5)))
    with pytest.raises(wire.Malformed, match=why):
        wire.decode_message(mangle(msg))


def test_impossible_numbers_and_undecodable_bodies_are_malformed() -> None:
    with pytest.raises(wire.Malformed, match="impossible"):
        wire.decode_message(wire.encode_message("a", 1, 3, 4, T0, 0, 0, wire.encode_samples(samples(1))))
    with pytest.raises(wire.Malformed, match="does not decode"):
        wire.decode_message(wire.encode_message("a", 1, 1, 1, T0, 0, 0, b"\xff\xff\xff\xff\x00\x00\x00\x01"))


def test_topics_and_acknowledgements() -> None:
    assert wire.site_of(wire.batch_topic("s1")) == "s1"
    assert wire.site_of("heatrec/v1/s1/batch/extra") is None
    assert wire.site_of("other/v1/s1/batch") is None
    ack = wire.decode_ack(wire.encode_ack("s1", 5, 17, 17))
    assert (ack.site, ack.epoch, ack.watermark) == ("s1", 5, 17)
    with pytest.raises(wire.Malformed):
        wire.decode_ack(b"{}")
    assert wire.decode_status(wire.encode_status("s1", False))["online"] is False


def _box(d: Path, segment: int = 4096, bound: int = 1 << 20) -> Outbox:
    box = Outbox(d, max_bytes=bound, segment_bytes=segment)
    box.open()
    return box


async def test_outbox_numbers_batches_and_a_restart_replays_them_with_the_same_boundaries(tmp_path: Path) -> None:
    box = _box(tmp_path)
    sent = [await box.append(samples(10, start=i * 10)) for i in range(30)]
    assert [b.seq for b in sent] == list(range(1, 31))
    epoch = box.epoch
    box.acknowledge(12)
    box.close()
    again = _box(tmp_path)
    assert again.epoch == epoch and again.watermark == 12 and again.next_seq == 31
    assert again.backlog_batches == 18 and again.base == 13
    for b in sent[12:]:
        got = again.get(b.seq)
        assert got is not None and (got.seq, got.body, got.samples, got.created) == (b.seq, b.body, b.samples,
                                                                                     b.created)
    assert again.get(12) is None  # acknowledged: never sent again
    again.close()


async def test_outbox_deletes_only_acknowledged_segments_and_never_numbers_back(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for i in range(40):
        await box.append(samples(20, start=i * 20))
    segments = len(box.spool.sealed())
    assert segments >= 3
    box.acknowledge(5)
    assert len(box.spool.sealed()) == segments  # the first segment still holds batches 6..
    box.acknowledge(40)
    assert box.spool.sealed() == [] and box.backlog_batches == 0
    box.close()
    again = _box(tmp_path)  # every segment is gone: the numbering carries on from the saved watermark
    assert (await again.append(samples(1))).seq == 41
    again.close()


async def test_outbox_takes_the_centres_watermark_when_it_knows_more(tmp_path: Path) -> None:
    box = _box(tmp_path)
    await box.append(samples(1))
    assert box.acknowledge(100)
    assert (await box.append(samples(1))).seq == 101


async def test_outbox_bound_loses_oldest_batches_and_base_says_so(tmp_path: Path) -> None:
    box = _box(tmp_path, segment=16 * 1024, bound=64 * 1024)
    for i in range(200):
        await box.append(samples(20, start=i * 20))
    assert box.lost_batches > 0 and box.spool.stats.dropped_samples > 0
    assert box.base == box.lost_batches + 1  # the centre skips what was lost, and only that
    assert box.get(1) is None and box.get(box.base) is not None
    box.close()


def test_uplink_section_and_central_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config({"uplink": {"url": "mqtts://central.example:8883", "site": "odense-1",
                                   "outbox_dir": "outbox"}}, "plant.toml", tmp_path)
    assert cfg.uplink is not None and cfg.uplink.outbox_dir == str(tmp_path / "outbox")
    with pytest.raises(ConfigError, match=r"plant.toml: uplink.site: .*pattern"):
        parse_config({"uplink": {"url": "mqtt://h", "site": "a/b"}}, "plant.toml")
    with pytest.raises(ConfigError, match=r"uplink.url"):
        parse_config({"uplink": {"url": "http://h", "site": "a"}}, "plant.toml")
    path = tmp_path / "central.toml"
    monkeypatch.setenv("FLEET_PW", "s3cret")
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1883"\npassword = "${FLEET_PW}"\n'
                    '[[sites]]\nid = "a"\n[[sites]]\nid = "b"\n')
    central = load_central_config(path)
    assert central.broker.password == "s3cret" and [s.id for s in central.sites or []] == ["a", "b"]
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1883"\ngroup = "a/b"\n')
    with pytest.raises(ConfigError, match=r"central.toml: broker.group"):
        load_central_config(path)
    path.write_text('[broker]\nurl = "mqtt://h"\n[[sites]]\nid = "a"\n[[sites]]\nid = "a"\n')
    with pytest.raises(ConfigError, match=r"sites\[1\].id: site 'a' appears twice"):
        load_central_config(path)


def test_the_examples_of_fleet_md_are_valid_configuration(tmp_path: Path) -> None:
    import re
    import tomllib

    from service.fleet_config import CentralConfig

    doc = (Path(__file__).resolve().parents[2] / "docs" / "FLEET.md").read_text()
    site, central = re.findall(r"```toml\n(.*?)```", doc, re.S)
    cfg = parse_config(tomllib.loads(site.replace("${HEATREC_UPLINK_PASSWORD}", "x")), "FLEET.md", tmp_path)
    assert cfg.uplink is not None and cfg.uplink.site == "odense-1"
    c = CentralConfig.model_validate(tomllib.loads(central.replace("${HEATREC_CENTRAL_MQTT_PASSWORD}", "x")))
    assert [s.id for s in c.sites or []] == ["odense-1", "vestforbraending", "aarhus-dc"]


def test_heatrec_central_names_the_file_and_field_of_a_bad_config(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    assert main(["central", "-c", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: file not found" in capsys.readouterr().err
    bad = tmp_path / "central.toml"
    bad.write_text('[broker]\nurl = "mqtt://127.0.0.1:1883"\n[ingest]\nmax_in_flight = 0\n')
    assert main(["central", "-c", str(bad)]) == 2
    assert "central.toml: ingest.max_in_flight:" in capsys.readouterr().err
