"""Models of the `[alarms]` section: limit and state alarms on points, and the MQTT publisher of their changes.

Self-contained: whether an alarm's point exists is a check across sections, made by HeatrecConfig in
service/config.py, which also re-exports these models.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from service.schema import ID_PATTERN, POINT_REF_PATTERN, StrictModel

__all__ = ["AlarmsConfig", "AlarmsMqttConfig", "LimitAlarm", "StateAlarm"]

_POINT_REF_PATTERN = POINT_REF_PATTERN


class LimitAlarm(StrictModel):
    """Limit and quality alarms on one point."""

    point: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$", description="full point id, device.point")
    high: float | None = Field(default=None, description="alarm when the value rises above this")
    low: float | None = Field(default=None, description="alarm when the value falls below this")
    deadband: float = Field(default=0.0, ge=0, description="the value must come back this far inside to clear")
    on_delay_s: float = Field(default=0.0, ge=0, description="the condition must last this long to alarm")
    quality: bool = Field(default=True, description="also alarm when the point's quality is BAD or STALE")
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    message: str = ""

    @model_validator(mode="after")
    def _limits(self) -> LimitAlarm:
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class StateAlarm(StrictModel):
    """An alarm on a point's discrete value: a bit of a status word, a code, or a set of vendor codes."""

    point: str = Field(pattern=_POINT_REF_PATTERN, description="full point id, device.point (a status word or code)")
    name: str = Field(pattern=ID_PATTERN, description="the alarm's name; its id is POINT:NAME")
    bit: int | None = Field(default=None, ge=0, le=63, description="alarm on this bit of the value (0 = lowest)")
    bit_value: Literal[0, 1] = Field(default=1, description="with bit: the bit's value that alarms")
    equals: int | None = Field(default=None, description="alarm when the value equals this code")
    codes: dict[str, str] | None = Field(default=None, description="alarm on any of these codes, each with its "
                                                                   "text (vendor fault codes): { \"17\" = \"...\" }")
    on_delay_s: float = Field(default=0.0, ge=0, description="the condition must last this long to alarm")
    severity: Literal["low", "medium", "high", "critical"] = "high"
    message: str = ""

    @model_validator(mode="after")
    def _one_condition(self) -> StateAlarm:
        given = [k for k in ("bit", "equals", "codes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of bit, equals or codes" + (f" (got {', '.join(given)})" if given
                                                                           else ""))
        if self.name in ("high", "low", "quality"):
            raise ValueError(f"name '{self.name}' is taken by the limit alarms of a point: choose another")
        for code in self.codes or {}:
            try:
                int(code)
            except ValueError:
                raise ValueError(f"codes: key '{code}' is not an integer code") from None
        return self

    @property
    def alarm_id(self) -> str:
        """POINT:NAME."""
        return f"{self.point}:{self.name}"


class AlarmsMqttConfig(StrictModel):
    """Publish every alarm state change as retained JSON to an MQTT broker (SCADA, HMIs)."""

    url: str = Field(description="mqtt://host[:port] or mqtts://host[:port] of the broker")
    topic_prefix: str = Field(default="heatrec/alarms", description="alarms go to PREFIX/ALARM_ID")
    username: str | None = None
    password: str | None = Field(default=None, description="use ${VAR} to keep it out of the file")
    client_id: str | None = Field(default=None, description="MQTT client id; the broker picks one if unset")
    qos: Literal[0, 1, 2] = 1
    retain: bool = Field(default=True, description="retained: a client that subscribes later gets the current state")
    queue_size: int = Field(default=1000, ge=1, le=1_000_000,
                            description="changes held while the broker is away; the oldest are dropped beyond it")
    tls_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// (system CAs if unset)")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM) for mqtts://")
    tls_key_file: str | None = Field(default=None, description="private key (PEM) of tls_cert_file")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        try:
            u.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"'{v}' has an invalid port") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.path not in ("", "/"):
            raise ValueError(f"'{v}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "+#\0"):
            raise ValueError(f"'{v}' is not a topic prefix like heatrec/alarms (no wildcards, no leading or "
                             "trailing '/')")
        return v

    @model_validator(mode="after")
    def _tls(self) -> AlarmsMqttConfig:
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file")
        return self


class AlarmsConfig(StrictModel):
    """Alarm rules; every device also gets an offline alarm."""

    device_offline_delay_s: float = Field(default=10.0, ge=0, description="a device not connected this long alarms")
    device_offline_severity: Literal["low", "medium", "high", "critical"] = "high"
    evaluate_interval_s: float = Field(default=1.0, gt=0, le=60)
    limits: list[LimitAlarm] = Field(default_factory=list)
    states: list[StateAlarm] = Field(default_factory=list, description="alarms on discrete values (status bits, "
                                                                        "codes)")
    mqtt: AlarmsMqttConfig | None = Field(default=None, description="also publish alarm changes over MQTT")
