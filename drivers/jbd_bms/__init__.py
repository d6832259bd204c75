"""JBD / Xiaoxiang smart BMS: basic info and cell voltages polled over UART or BLE (service FF00)."""

from drivers.family import DriverEntry, DriverFamily, Recogniser, ScanHint

FAMILY = DriverFamily(
    name="jbd_bms",
    title="JBD / Xiaoxiang smart BMS (read only)",
    drivers=(DriverEntry("jbd_bms", "drivers.jbd_bms.driver:JbdBmsDriver",
                         quantities=("voltage", "current", "power", "remaining_capacity", "nominal_capacity", "cycles",
                                     "state_of_charge", "cell_count", "cell_voltage_min", "cell_voltage_max",
                                     "cell_voltage_delta", "charge_fet", "discharge_fet", "protection", "balancing"),
                         simulator="drivers.jbd_bms.simulator:simulation",
                         responder="drivers.jbd_bms.simulator:JbdResponder"),),
    probe=(Recogniser("jbd_bms", "jbd_bms", "JBD / Xiaoxiang BMS (DD ... 77 frames)",
                      "drivers.jbd_bms.protocol:JbdProtocol"),),
    ble_patterns=((0, 0x03, b"\x00\xff"), (0, 0x02, b"\x00\xff")),  # service 0xFF00 in the 16-bit UUID list
    scan_hints=(ScanHint("0000ff00-0000-1000-8000-00805f9b34fb", "jbd_bms",
                         'JBD/Xiaoxiang BMS (service FF00): transport = "ble"'),),
)
