"""The simulated heat store: charged beyond demand when encouraged, discharged on a shortfall, its losses, its face."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from service.clock import VirtualClock
from service.config import SimulationConfig
from simulators.heat_pump_modbus import float32_registers
from simulators.heat_store_modbus import IR_CONTENT, store_registers
from simulators.plant import PlantModel, SgReady, store_capacity_kwh
from simulators.runner import Simulation


def plant(**store: object) -> SimulationConfig:
    """One CDU of 800 kW, one 1200 kW heat pump, a network of 600 kW of demand (base load), a 100 m³ tank."""
    return SimulationConfig.model_validate({
        "dh_design_demand_kw": 600.0, "dh_base_demand_fraction": 1.0, "pipe_loss_fraction": 0.0,
        "cdus": [{"id": "cdu1", "endpoint": "opc.tcp://127.0.0.1:0", "it_load_kw": 800.0}],
        "heat_pumps": [{"id": "hp1", "endpoint": "127.0.0.1:0", "capacity_kw": 1200.0, "time_constant_s": 5.0}],
        "heat_store": {"endpoint": "127.0.0.1:0", "volume_m3": 100.0, "min_temperature": 40.0,
                       "max_temperature": 70.0, **store}})


def run(model: PlantModel, clock: VirtualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        model.tick()


def stored_balance(model: PlantModel, initial_kwh: float) -> float:
    """Content now minus (initial + charged - discharged - shell losses), kWh: zero when the tank's books close."""
    assert model.store is not None
    led = model.ledger
    return model.store.content_kwh - (initial_kwh + led.store_charged - led.store_discharged - led.store_losses)


def test_capacity_is_volume_times_heat_capacity_times_the_temperature_span() -> None:
    cfg = plant().heat_store
    assert cfg is not None
    # 100 m³ · 986 kg/m³ · 4.18 kJ/(kg·K) · 30 K = 12.36 GJ = 3434 kWh.
    assert store_capacity_kwh(cfg) == pytest.approx(100 * 986 * 4.18 * 30 / 3600)


def test_encouraged_pumps_charge_the_tank_with_what_the_network_does_not_take() -> None:
    clock = VirtualClock()
    model = PlantModel(plant(), clock)
    model.set_sg_ready("hp1", SgReady.ENCOURAGED)
    run(model, clock, 600)
    st = model.store
    assert st is not None and st.charge_kw > 100.0, "the pump makes more than the 600 kW the network takes"
    assert model.delivered_kw == pytest.approx(600.0, rel=1e-6), "the network gets its demand, no more"
    assert st.content_kwh > 0 and st.discharge_kw == 0.0
    assert abs(model.ledger.imbalance()) < 1e-6 * model.ledger.it_heat
    assert abs(stored_balance(model, 0.0)) < 1e-6 * model.ledger.store_charged


def test_in_normal_mode_the_pump_follows_demand_and_the_tank_stays_as_it_is() -> None:
    clock = VirtualClock()
    model = PlantModel(plant(initial_state_of_charge=0.5), clock)
    before = model.store.content_kwh if model.store else 0.0
    run(model, clock, 300)
    assert model.store is not None and model.store.charge_kw == 0.0
    assert model.store.content_kwh == pytest.approx(before)
    assert model.delivered_kw == pytest.approx(600.0, rel=1e-3)


def test_a_blocked_pump_leaves_the_tank_to_cover_the_network_until_it_is_empty() -> None:
    clock = VirtualClock()
    model = PlantModel(plant(initial_state_of_charge=0.1, max_discharge_kw=500.0), clock)
    initial = model.store.content_kwh if model.store else 0.0
    model.set_sg_ready("hp1", SgReady.BLOCKED)
    run(model, clock, 60)
    st = model.store
    assert st is not None and st.discharge_kw == pytest.approx(500.0), "within its discharge limit"
    assert model.delivered_kw == pytest.approx(500.0)
    run(model, clock, 3600)  # 343 kWh at 500 kW: empty after about 41 minutes
    assert st.content_kwh == pytest.approx(0.0, abs=1e-6) and st.discharge_kw == pytest.approx(0.0, abs=1e-6)
    assert model.delivered_kw == pytest.approx(0.0, abs=1e-6)
    assert model.ledger.store_discharged == pytest.approx(initial, rel=1e-6)
    assert abs(model.ledger.imbalance()) < 1e-6 * model.ledger.it_heat


def test_standing_losses_follow_the_mean_temperature_and_close_the_tank_books() -> None:
    clock = VirtualClock()
    # UA 1000 W/K; full at 70 °C in a 10 °C room: 60 kW.
    model = PlantModel(plant(initial_state_of_charge=1.0, loss_w_per_k=1000.0), clock)
    assert model.store is not None
    initial = model.store.content_kwh
    model.dh_demand_scale = 0.0  # the network takes nothing: the tank only loses
    run(model, clock, 1)
    assert model.store.loss_kw == pytest.approx(60.0, rel=1e-3)
    run(model, clock, 3600)
    assert model.store.loss_kw < 60.0 and model.store.temperature < 70.0, "a cooler tank loses less"
    lost = model.ledger.store_losses
    assert 55.0 < lost < 60.0
    assert abs(stored_balance(model, initial)) < 1e-9 * initial


def test_the_register_map_carries_the_state_of_charge_and_the_content() -> None:
    clock = VirtualClock()
    model = PlantModel(plant(initial_state_of_charge=0.25), clock)
    assert model.store is not None
    regs = store_registers(model.store)
    assert regs[0] == 2500 and regs[1] == round(model.store.temperature * 10)
    assert regs[IR_CONTENT:IR_CONTENT + 2] == float32_registers(model.store.content_kwh)


@pytest.mark.integration
async def test_the_tank_is_served_over_modbus_tcp() -> None:
    cfg = plant(initial_state_of_charge=0.4)
    cfg = cfg.model_copy(update={"cdus": [], "heat_pumps": []})
    async with Simulation(cfg, tick_s=None) as sim:
        assert sim.heat_store is not None
        host, port = sim.heat_store.address
        client = AsyncModbusTcpClient(host, port=port, timeout=2)
        await client.connect()
        try:
            rr = await client.read_input_registers(0, count=10, device_id=1)
            assert not rr.isError(), rr
            assert rr.registers[0] == 4000
            bad = await client.read_holding_registers(0, count=1, device_id=1)
            assert bad.isError(), "the tank's face takes no commands"
        finally:
            client.close()
        assert "tank1" in sim.endpoints()
