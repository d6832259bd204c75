"""CAN bus: an slcan adapter or socketcan, frames decoded with cantools from the bus's DBC file."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

FAMILY = DriverFamily(
    name="can",
    title="CAN bus (slcan USB-CAN adapters, socketcan), decoded from a DBC file, listen-only",
    drivers=(DriverEntry("can", "drivers.can.driver:CanDriver",
                         simulator="drivers.can.simulator:simulation",
                         sim_device="drivers.can.simulator:SIM_DEVICE"),),
    probe=(Recogniser("slcan", "can", "slcan CAN adapter (Lawicel ASCII frames; decoding needs the bus's DBC file)",
                      "drivers.can.protocol:SlcanSniffer"),),
)
