"""VESC motor controllers: COMM_GET_VALUES polled over UART or BLE (Nordic UART Service)."""

from drivers.family import DriverEntry, DriverFamily, Recogniser, ScanHint

_NUS_LE = bytes.fromhex("6e400001b5a3f393e0a9e50e24dcca9e")[::-1]  # NUS service UUID, little-endian on air

FAMILY = DriverFamily(
    name="vesc",
    title="VESC motor controllers (COMM_GET_VALUES, read only)",
    drivers=(DriverEntry("vesc", "drivers.vesc.driver:VescDriver",
                         quantities=("temperature_fet", "temperature_motor", "motor_current", "input_current", "duty",
                                     "erpm", "input_voltage", "amp_hours", "amp_hours_charged", "watt_hours",
                                     "watt_hours_charged", "tachometer", "tachometer_abs", "fault"),
                         simulator="drivers.vesc.simulator:simulation",
                         sim_device="drivers.vesc.simulator:SIM_DEVICE",
                         responder="drivers.vesc.simulator:VescResponder"),),
    probe=(Recogniser("vesc", "vesc", "VESC motor controller (COMM_GET_VALUES packets)",
                      "drivers.vesc.protocol:VescProtocol"),),
    ble_patterns=((0, 0x07, _NUS_LE), (0, 0x06, _NUS_LE)),  # with transport = "ble": NUS in the 128-bit UUID list
    scan_hints=(ScanHint("6e400001-b5a3-f393-e0a9-e50e24dcca9e", "vesc",
                         'VESC over BLE (Nordic UART): transport = "ble"', name_contains="vesc"),),
)
