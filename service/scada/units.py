"""Engineering units as OPC UA EUInformation (UNECE Rec. 20 common codes, OPC UA Part 8)."""

from __future__ import annotations

from asyncua import ua

UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"

# heatrec unit string → (UNECE common code, display name, description)
UNITS: dict[str, tuple[str, str, str]] = {
    "degC": ("CEL", "°C", "degree Celsius"),
    "K": ("KEL", "K", "kelvin"),
    "kW": ("KWT", "kW", "kilowatt"),
    "MW": ("MAW", "MW", "megawatt"),
    "%": ("P1", "%", "percent"),
    "L/min": ("L2", "l/min", "litre per minute"),
    "m3/h": ("MQH", "m³/h", "cubic metre per hour"),
    "m3": ("MTQ", "m³", "cubic metre"),
    "GJ": ("GV", "GJ", "gigajoule"),
    "kWh": ("KWH", "kWh", "kilowatt hour"),
    "MWh": ("MWH", "MWh", "megawatt hour"),
    "kPa": ("KPA", "kPa", "kilopascal"),
    "bar": ("BAR", "bar", "bar"),
}


def eu_information(unit: str) -> ua.EUInformation:
    """EUInformation for a heatrec unit string; unknown units keep their text with UnitId -1."""
    code, display, description = UNITS.get(unit, ("", unit, unit))
    unit_id = -1
    if code:
        unit_id = 0
        for ch in code:  # Part 8: the common code's ASCII bytes packed big-endian into an Int32
            unit_id = unit_id << 8 | ord(ch)
    return ua.EUInformation(NamespaceUri=UNECE_NAMESPACE, UnitId=unit_id,
                            DisplayName=ua.LocalizedText(display, "en"),
                            Description=ua.LocalizedText(description, "en"))
