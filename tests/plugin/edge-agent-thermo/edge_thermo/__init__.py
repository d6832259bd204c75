"""Acme TH-1 thermo-hygrometer: `$TH,<temperature>,<humidity>*<xor>` lines on a serial port."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

FAMILY = DriverFamily(
    name="thermo",
    title="Acme TH-1 thermo-hygrometer ($TH sentences)",
    drivers=(DriverEntry("acme_th1", "edge_thermo.driver:Th1Driver", quantities=("temperature", "humidity"),
                         simulator="edge_thermo.simulator:simulation"),),
    probe=(Recogniser("acme_th", "acme_th1", "Acme TH-1 ($TH sentences)", "edge_thermo.protocol:Th1Protocol"),),
)
